"""``balsam report`` (summary, filters, times, --plot) and ``balsam log`` (kinds, -n, --follow),
run as real subprocesses against the synthetic history of test_analytics."""
from __future__ import annotations

import datetime
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from conftest import run_balsam
from launcher_support import wait_for
from test_analytics import at, history, jid  # noqa: F401  (history is a fixture)

from balsam.cli.cmd_report import parse_time
from balsam.cli.progress import Steps

UNTIL = at(800).isoformat()


def test_report_prints_counts_throughput_runtime_nodes_and_errors(history):  # noqa: F811
    r = run_balsam("report", "--until", UNTIL, "--recent", "400s")
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""  # no progress indicator in a pipe
    assert r.stdout.splitlines() == [
        "Jobs: 7",
        "  CREATED                   1",
        "  RUNNING                   1",
        "  JOB_FINISHED              3",
        "  FAILED                    2",
        "Throughput (last 400s): 1 RUN_DONE, 1 JOB_FINISHED (9.0 finished/h)",
        "Runtime: 6 runs, mean 166.7 s, p50 150.0 s, p95 307.5 s, max 310.0 s",
        "Nodes: 2.00 busy now (1 tasks running), 8.64 on average over the last 400s",
        "Most common errors:",
        f"       3 x exit code 1  (e.g. job {jid('C')})",
        f"       1 x gave up  (e.g. job {jid('D')})",
        f"       1 x exit code 2  (e.g. job {jid('D')})",
    ]


def test_report_filters_by_workflow_substring_app_session_and_since(history):  # noqa: F811
    r = run_balsam("report", "--wf", "alpha", "--app", "sim", "--until", UNTIL)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[:4] == ["Jobs: 3", "  JOB_FINISHED              2",
                                         "  FAILED                    1",
                                         "Throughput (last 1h): 2 RUN_DONE, 2 JOB_FINISHED (2.0 finished/h)"]
    r = run_balsam("report", "--session", "8", "--since", at(0).isoformat(), "--until", UNTIL)
    assert "Runtime: 2 runs, mean 305.0 s" in r.stdout
    r = run_balsam("report", "--since", at(250).isoformat(), "--until", UNTIL)
    assert "Runtime: 4 runs, mean 217.5 s, p50 250.0 s" in r.stdout


def test_report_rejects_bad_times_in_one_line(history):  # noqa: F811
    for args in (["--since", "yesterday"], ["--recent", "0h"],
                 ["--since", UNTIL, "--until", at(0).isoformat()]):
        r = run_balsam("report", *args)
        assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stderr
        assert r.stderr.startswith("balsam report: error: ")


def test_times_are_iso_or_ages():
    now = datetime.datetime(2024, 5, 1, 12, tzinfo=datetime.timezone.utc)
    assert parse_time("2h", now) == now - datetime.timedelta(hours=2)
    assert parse_time("30m", now) == now - datetime.timedelta(minutes=30)
    assert parse_time("1.5d", now) == now - datetime.timedelta(hours=36)
    assert parse_time("2024-05-01T10:00:00+00:00", now) == now - datetime.timedelta(hours=2)
    assert parse_time("2024-05-01T10:00", now).tzinfo is not None  # naive = local time


@pytest.mark.slow
def test_report_plot_writes_a_png(history, tmp_path):  # noqa: F811
    pytest.importorskip("matplotlib", reason="the plot extra (matplotlib) is not installed")
    out = tmp_path / "campaign.png"
    r = run_balsam("report", "--until", UNTIL, "--plot", str(out))
    assert r.returncode == 0, r.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10000
    assert r.stdout.splitlines()[-1] == f"Plots written to {out}"


def test_report_plot_without_matplotlib_says_how_to_install(history, tmp_path):  # noqa: F811
    hide = tmp_path / "nompl"
    hide.mkdir()
    (hide / "matplotlib.py").write_text("raise ImportError('hidden for the test')\n")
    r = run_balsam("report", "--plot", str(tmp_path / "x.png"),
                   env={"PYTHONPATH": f"{hide}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"})
    assert r.returncode == 2
    assert r.stderr == ("balsam report: error: --plot needs matplotlib: pip install "
                        "'balsam-classic[plot]' (or pip install matplotlib)\n")


def test_progress_shows_on_a_terminal_only(tmp_path):
    class Tty:
        def __init__(self, tty: bool) -> None:
            self.text, self.tty = "", tty

        def isatty(self) -> bool:
            return self.tty

        def write(self, s: str) -> None:
            self.text += s

        def flush(self) -> None:
            pass

    for tty in (True, False):
        out = Tty(tty)
        steps = Steps("report", 2, stream=out)  # type: ignore[arg-type]
        steps.step("summary")
        steps.step("plot")
        steps.done()
        assert out.text == ("\rreport: summary (1/2)\rreport: plot (2/2)   \r" + " " * 18 + "\r"
                            if tty else "")


@pytest.fixture
def logs(db):
    log = os.path.join(db, "log")
    # Newer than any log other tests left in the shared DB (launchers, services).
    base = max([time.time()] + [os.path.getmtime(os.path.join(log, f)) for f in os.listdir(log)]) + 60
    made = []
    for name, text, age in (("service_20240101-000000_1.log", "svc old\n", 30),
                            ("launcher_20240101-000000_2.log", "".join(f"L{i}\n" for i in range(30)), 20),
                            ("service_20240102-000000_3.log", "svc new 1\nsvc new 2\n", 10)):
        path = os.path.join(log, name)
        with open(path, "w") as fh:
            fh.write(text)
        t = base - age
        os.utime(path, (t, t))
        made.append(path)
    yield made
    for path in made:
        os.remove(path)


def test_log_shows_the_newest_log_of_each_kind(logs):
    r = run_balsam("log", "--service")
    assert (r.returncode, r.stdout) == (0, "svc new 1\nsvc new 2\n")
    r = run_balsam("log", "--launcher", "-n", "3")
    assert r.stdout == "L27\nL28\nL29\n"
    r = run_balsam("log", "--server", "-n", "1")
    assert r.returncode == 0 and r.stdout.count("\n") == 1
    r = run_balsam("log", "--all", "-n", "1")
    ours = {f"==> {p} <==" for p in logs}  # other tests' and the server's logs are there too
    headers = [ln for ln in r.stdout.splitlines() if ln in ours]
    assert headers == [f"==> {p} <==" for p in logs]  # oldest first, newest last


@pytest.mark.slow
def test_log_follow_prints_appended_lines_and_new_logs_and_exits_0_on_ctrl_c(logs, db):
    proc = subprocess.Popen([sys.executable, "-m", "balsam", "log", "--service", "--follow", "-n", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)
    reader = threading.Thread(target=read)
    reader.start()

    def printed(line: str) -> None:  # a loaded machine may take seconds to start or poll
        wait_for(lambda: line in lines, 60, f"{line!r} from balsam log --follow")
    newer = os.path.join(db, "log", "service_20240103-000000_4.log")
    try:
        printed("svc new 2\n")
        with open(logs[2], "a") as fh:
            fh.write("appended\n")
        with open(os.path.join(db, "log", "launcher_20240101-000000_2.log"), "a") as fh:
            fh.write("not a service line\n")
        printed("appended\n")  # following now: a log made from here on is a new one
        with open(newer, "w") as fh:
            fh.write("restarted\n")
        printed("restarted\n")
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        reader.join(30)
        out, err = "".join(lines), proc.stderr.read()
    finally:
        proc.kill()
        if os.path.exists(os.path.join(db, "log", "service_20240103-000000_4.log")):
            os.remove(os.path.join(db, "log", "service_20240103-000000_4.log"))
    assert proc.returncode == 0 and err == ""
    assert out == f"svc new 2\nappended\n\n==> {newer} <==\nrestarted\n"
