"""Text renderings of jobs shared by the ORM (``repr(job)``) and the Django-free CLI."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Optional

from balsam.core import schema

REPR_FIELDS = [k for k in schema.JOB_DEFAULTS if k not in ("lock",)] + ["parents", "queued_launch_id"]


def job_repr(job: dict[str, Any], app: Optional[dict[str, str]], workdir: Optional[str]) -> str:
    """The classic verbose job listing: every field, then the command and working directory."""
    width = max(len(k) for k in REPR_FIELDS)
    lines = [f"BalsamJob {job['job_id']}", "-" * 50]
    for key in REPR_FIELDS:
        lines.append(f"{key:>{width}}: {job.get(key, '')}")
    if app is None:
        lines.append(f"  *** NO APPLICATION MATCHING {job.get('application')!r}")
    else:
        lines.append(f"  *** Executed command: {schema.app_command(app['executable'], job.get('args', ''))}")
    if workdir:
        lines.append(f"  *** Working directory: {workdir}")
    return "\n".join(lines) + "\n"


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str],
          headers: Optional[Sequence[str]] = None) -> str:
    """A plain text table with a header rule; columns sized to their widest cell."""
    return table_of_columns([[r.get(c, "") for r in rows] for c in columns], headers or columns,
                            len(rows))


def table_of_columns(values: Sequence[Sequence[Any]], headers: Sequence[str], nrows: int) -> str:
    """:func:`table` of ``nrows`` rows given column by column: ``values[i]`` holds column i's
    cells (shown as ``str()`` of each)."""
    # Column-wise, with one %-format per table: `balsam ls` renders thousands of rows.
    cols = [list(map(str, col)) for col in values]
    widths = [max(len(h), max(map(len, col), default=0)) for h, col in zip(headers, cols)]
    line = " | ".join(f"%-{w}s" for w in widths)
    out = [(line % tuple(headers)).rstrip()]
    out.append("-" * len(out[0]))
    out += [(line % row).rstrip() for row in (zip(*cols) if cols else [()] * nrows)]
    return "\n".join(out)


def duration(seconds: float) -> str:
    """Compact age: ``42s``, ``3m05s``, ``2h07m``, ``3d04h``."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"
