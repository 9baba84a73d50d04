"""``balsam report``: where a campaign stands -- counts by state, throughput, runtimes, node
utilization and the most common errors -- and optional plots (matplotlib).

No Django: the numbers come from :mod:`balsam.core.analytics` on a plain psycopg2 cursor.
"""
from __future__ import annotations

import argparse
import datetime
import re
from typing import Any

from balsam.cli.common import add_command, transaction
from balsam.errors import BalsamError

_REL = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
EARLIEST = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
FUTURE = datetime.timedelta(days=366)
"""A window bound must lie between :data:`EARLIEST` and a year from now (no Balsam job is
older than 1970; later bounds are typos, and times near year 9999 overflow)."""


def register(sub: Any) -> None:
    p = add_command(sub, "report", run, "summarise the campaign: states, throughput, runtimes, "
                                        "node utilization, common errors; optionally plot them")
    p.add_argument("--wf", metavar="WF", help="only jobs whose workflow contains WF (as `ls --wf`)")
    p.add_argument("--app", metavar="APP", help="only jobs of application APP (exact name)")
    p.add_argument("--session", metavar="ID", type=int,
                   help="only jobs run by launcher session ID, within its lifetime")
    p.add_argument("--since", metavar="T", help="window start: ISO time or age (30m, 2h, 1d)")
    p.add_argument("--until", metavar="T", help="window end: ISO time or age (default now)")
    p.add_argument("--recent", metavar="T", default="1h",
                   help="span of the 'recent' throughput rate (default 1h)")
    p.add_argument("--plot", metavar="FILE.png",
                   help="also write throughput, utilization and state-time plots (needs matplotlib)")


def parse_time(text: str, now: datetime.datetime, flag: str = "") -> datetime.datetime:
    """An ISO time (naive = local time) or an age before ``now`` like 90s, 30m, 2h, 1d, 1w,
    between 1970 and a year from now (:class:`BalsamError` naming ``flag`` otherwise)."""
    where = f"{flag} {text!r}".strip()
    m = _REL.match(text)
    try:
        if m:
            when = now - datetime.timedelta(seconds=float(m.group(1)) * _UNIT[m.group(2)])
        else:
            when = datetime.datetime.fromisoformat(text.strip())
            when = when if when.tzinfo else when.astimezone()
    except ValueError:
        raise BalsamError(f"{where} is not a time: give an ISO time (2024-05-01T12:00) or an "
                          "age like 30m, 2h, 1d")
    except OverflowError:
        when = EARLIEST - FUTURE  # an age beyond any calendar: reported below
    if not EARLIEST <= when <= now + FUTURE:
        raise BalsamError(f"{where} is out of range: give a time between 1970 and a year from now")
    return when


def parse_span(text: str) -> float:
    m = _REL.match(text)
    if not m or float(m.group(1)) <= 0:
        raise BalsamError(f"--recent {text!r}: give a positive span like 30m, 1h, 1d")
    return float(m.group(1)) * _UNIT[m.group(2)]


def run(args: argparse.Namespace) -> int:
    from balsam.cli.progress import Steps
    from balsam.core import analytics, analytics_transfers

    now = datetime.datetime.now(datetime.timezone.utc)
    since = parse_time(args.since, now, "--since") if args.since else None
    until = parse_time(args.until, now, "--until") if args.until else None
    if since and until and since >= until:
        raise BalsamError("--since must be before --until")
    recent = parse_span(args.recent)
    if args.plot:
        from balsam.cli.report_plot import require_matplotlib

        require_matplotlib()
    f = analytics.Filters(workflow_contains=args.wf, app=args.app, session=args.session,
                          since=since, until=until)
    steps = Steps("report", 4 if args.plot else 1)
    with transaction() as (_, cur):
        steps.step("summary")
        s = analytics.summary(cur, f, recent_seconds=recent)
        s["transfers"] = analytics_transfers.summary(cur, f, recent_seconds=recent)
        if args.plot:
            from balsam.cli.report_plot import write_plots

            write_plots(cur, f, args.plot, steps)
    steps.done()
    print("\n".join(format_summary(s)))
    if args.plot:
        print(f"Plots written to {args.plot}")
    return 0


def _secs(v: Any) -> str:
    return "-" if v is None else f"{v:.1f} s"


def format_summary(s: dict[str, Any]) -> list[str]:
    """The report's lines (see docs/user-guide.md, "Monitoring")."""
    rec = s["recent"]
    span = _span(rec["seconds"])
    rt = s["runtime"]
    lines = [f"Jobs: {s['total']}"]
    lines += [f"  {state:<16} {n:>10}" for state, n in s["counts"].items()]
    lines.append(f"Throughput (last {span}): {rec['run_done']} RUN_DONE, {rec['finished']} "
                 f"JOB_FINISHED ({rec['finished_per_hour']:.1f} finished/h)")
    lines.append(f"Runtime: {rt['count']} runs, mean {_secs(rt['mean'])}, p50 {_secs(rt['p50'])}, "
                 f"p95 {_secs(rt['p95'])}, max {_secs(rt['max'])}")
    lines.append(f"Nodes: {s['busy_nodes']:.2f} busy now ({s['running_tasks']} tasks running), "
                 f"{rec['avg_busy_nodes']:.2f} on average over the last {span}")
    if "transfers" in s and any(s["transfers"]["counts"].values()):
        lines += _transfer_lines(s["transfers"], span)
    if s["errors"]:
        lines.append("Most common errors:")
        lines += [f"  {e['count']:>6} x {_one_line(e['message'])}  (e.g. job {e['example_job_id']})"
                  for e in s["errors"]]
    else:
        lines.append("No errors.")
    return lines


def _transfer_lines(t: dict[str, Any], span: str) -> list[str]:
    from balsam.core.analytics_transfers import human_bytes

    c, rec = t["counts"], t["recent"]
    return [f"Transfers: {c['done']} done ({human_bytes(t['bytes'])}), {c['failed']} failed, "
            f"{c['pending']} pending, {c['active']} active",
            f"Transfer throughput (last {span}): {rec['items']} items, "
            f"{human_bytes(rec['bytes'])} in {rec['batches']} batch(es) "
            f"({rec['items_per_second']:.2f} items/s, {human_bytes(rec['bytes_per_second'])}/s)"]


def _one_line(text: str, width: int = 60) -> str:
    flat = " ".join(text.split()) or "(no message)"
    return flat if len(flat) <= width else flat[: width - 3] + "..."


def _span(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
