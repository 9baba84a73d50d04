"""``balsam top``: one frame on a known DB state (--once), the live view in a pseudo-terminal
(refresh, resize, ``q`` and Ctrl-C restore the terminal and exit 0), and the no-DB error."""
from __future__ import annotations

import fcntl
import os
import re
import select
import struct
import subprocess
import sys
import termios
import time
from typing import Any

import pytest
from cli_support import add_jobs
from conftest import run_balsam

from balsam.core import lifecycle, schema

LONG_HOST = "a-very-long-login-node-hostname.example.org"


def add_session(cursor: Any, host: str, mode: str, nodes: int, *, ended: bool = False,
                label: str = "", sched: str = "") -> int:
    cursor.execute(
        f"""INSERT INTO {schema.SESSION_TABLE} (hostname, pid, job_mode, label, scheduler_id,
            num_nodes, started_at, heartbeat, lease_seconds, ended_at, end_reason)
            VALUES (%s, 1, %s, %s, %s, %s, now() - interval '125 seconds',
                    now() - interval '5 seconds', 60, {'now()' if ended else 'NULL'}, '')
            RETURNING id""", [host, mode, label, sched, nodes])
    return int(cursor.fetchone()[0])


def add_batch_job(cursor: Any, sched: str, queue: str, nodes: int, minutes: int, state: str) -> int:
    cursor.execute(f"""INSERT INTO {schema.QLAUNCH_TABLE} (scheduler_id, queue, nodes, wall_minutes,
                       job_mode, state, project, wf_filter, sched_flags, command, prescheduled_only,
                       from_balsam) VALUES (%s, %s, %s, %s, 'mpi', %s, '', '', '', '', false, true)
                       RETURNING id""",
                   [sched, queue, nodes, minutes, state])
    return int(cursor.fetchone()[0])


def add_event(cursor: Any, job_id: str, src: str, dst: str, message: str = "",
              seconds_ago: int = 10) -> None:
    """A synthetic history row (the jobs were inserted directly in their states)."""
    cursor.execute(f"""INSERT INTO {schema.EVENT_TABLE} (job_id, timestamp, from_state, to_state,
                       message) VALUES (%s, now() - %s * interval '1 second', %s, %s, %s)""",
                   [job_id, seconds_ago, src, dst, message])


@pytest.fixture
def known(cursor: Any) -> dict[str, Any]:
    """3 finished, 2 running under a live MPI session, 1 failed, 4 runnable; sessions in each
    kind; batch jobs in final and unfinished states; failure events in and out of the window."""
    live = add_session(cursor, LONG_HOST, "mpi", 4, sched="4242")
    add_session(cursor, "gone-host", "mpi", 16, ended=True)
    add_session(cursor, "worker-host", "processing", 0)
    serial = add_session(cursor, "nid00007", "serial", 2, label="ens")
    finished = add_jobs(cursor, 3, name="done", state="JOB_FINISHED")
    running = add_jobs(cursor, 2, name="run", state="RUNNING")
    cursor.execute(f"UPDATE {schema.JOB_TABLE} SET session_id = %s WHERE job_id = ANY(%s::uuid[])",
                   [live, running])
    failed = add_jobs(cursor, 1, name="sim_with_a_very_long_name_indeed", state="FAILED")[0]
    add_jobs(cursor, 4, name="ready", state="PREPROCESSED")
    # The history is exactly the one written below (not the bulk insert's creation events).
    cursor.execute(f"DELETE FROM {schema.EVENT_TABLE}")
    for job in finished:
        add_event(cursor, job, "POSTPROCESSED", "JOB_FINISHED")
    add_event(cursor, failed, "RUNNING", "RUN_ERROR", "nonzero return 7: segfault\ntail line", 30)
    add_event(cursor, failed, "RUN_ERROR", "FAILED", "\nerror handler gave up\nmore", 20)
    add_event(cursor, failed, "RUN_ERROR", "FAILED", "too old to show", 7200)
    queued = add_batch_job(cursor, "99123", "debug", 8, 30, "queued")
    add_batch_job(cursor, "99000", "debug", 1, 5, "finished")
    add_batch_job(cursor, "", "default", 2, 60, "submit-failed")
    runs = add_batch_job(cursor, "99124", "a-queue-with-a-long-name", 128, 720, "running")
    return {"live": live, "serial": serial, "failed": failed, "queued": queued, "runs": runs}


def session_ages(cursor: Any, session_id: int) -> tuple[float, float]:
    """(seconds since the session's heartbeat, since its start), by the database's clock."""
    cursor.execute(f"SELECT EXTRACT(EPOCH FROM now() - heartbeat), "
                   f"EXTRACT(EPOCH FROM now() - started_at) FROM {schema.SESSION_TABLE} "
                   "WHERE id = %s", [session_id])
    beat, start = cursor.fetchone()
    return float(beat), float(start)


def assert_ages_shown(row: str, before: tuple[float, float], after: tuple[float, float]) -> None:
    """The row's heartbeat age ("6s") and uptime ("2m05s") lie between the ages read just
    before and just after ``balsam top`` ran (however long a loaded machine took to start it)."""
    found = re.search(r"\s(\d+)s\s+(\d+)m(\d\d)s ", row)
    assert found, row
    beat, start = int(found[1]), int(found[2]) * 60 + int(found[3])
    assert int(before[0]) <= beat <= after[0] + 1 and int(before[1]) <= start <= after[1] + 1, (
        row, before, after)


def test_once_prints_counts_rates_sessions_batch_jobs_and_failures_in_80_columns(known, cursor):
    before = session_ages(cursor, known["live"])
    proc = run_balsam("top", "--once")
    after = session_ages(cursor, known["live"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    lines = proc.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), [ln for ln in lines if len(ln) > 80]
    assert re.match(r"balsam top  \d{4}-\d\d-\d\d \d\d:\d\d:\d\d  10 jobs  testdb$", lines[0])
    text = proc.stdout
    # Counts, and first-frame rates from the last minute's events (net per minute).
    assert "STATE                  JOBS   PER MIN  STATE                  JOBS   PER MIN" in text
    assert "PREPROCESSED              4         0  RUNNING                   2      -1.0" in text
    assert "POSTPROCESSED             0      -3.0  JOB_FINISHED              3      +3.0" in text
    assert "FAILED                    1      +1.0\n" in text
    # States with no job and no change are not shown (RUN_ERROR: one in, one out).
    assert "CREATED" not in text and "RUN_ERROR    " not in text
    # Live launcher sessions (not the ended one); the worker session only as a count.
    assert "Launchers: 2 live; 1 transition-worker session" in text
    # (Both sessions were written together: the same ages.)
    row = next(ln for ln in lines if "login-node" in ln)
    assert re.fullmatch(rf"\s*{known['live']} a-very-long-login-node-~ mpi\s+4\s+2\s+\d+s\s+\d+m\d\ds 4242",
                        row), row
    assert_ages_shown(row, before, after)
    row = next(ln for ln in lines if "nid00007" in ln)
    assert re.fullmatch(rf"\s*{known['serial']} nid00007 \(ens\)\s+serial\s+2\s+0\s+\d+s\s+\d+m\d\ds -",
                        row), row
    assert_ages_shown(row, before, after)
    assert "gone-host" not in text and "worker-host" not in text
    # Unfinished batch jobs only.
    assert "Batch jobs: 2 queued or running" in text
    # ... with their live states: the (local) scheduler lists neither of these made-up ids
    assert f"{known['queued']:>5} 99123          debug                8      30 ended      " \
           "db: queued\n" in text
    assert f"{known['runs']:>5} 99124          a-queue-with-a-~   128     720 ended      " \
           "db: running\n" in text
    assert "99000" not in text and "submit-failed" not in text
    # Latest failures: newest first, first non-empty line of the message, old ones left out.
    id8 = known["failed"][:8]
    fails = [ln for ln in lines if re.match(r"\d\d:\d\d:\d\d ", ln)]
    assert [ln[9:] for ln in fails] == [
        f"FAILED    sim_with_a_very~ {id8} error handler gave up",
        f"RUN_ERROR sim_with_a_very~ {id8} nonzero return 7: segfault",
    ]
    assert "too old" not in text


def test_once_on_an_empty_db_says_so(db):
    proc = run_balsam("top", "--once")
    assert proc.returncode == 0, proc.stderr
    assert "  (no jobs)" in proc.stdout
    assert "Launchers: 0 live; 0 transition-worker sessions" in proc.stdout
    assert "Batch jobs: 0 queued or running" in proc.stdout


def test_without_a_db_one_line_error_exit_2(db):
    proc = run_balsam("top", "--once", env={"BALSAM_DB_PATH": ""})
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("balsam top: error: no Balsam DB")


def test_live_mode_needs_a_terminal(db):
    proc = run_balsam("top")
    assert proc.returncode == 2
    assert proc.stderr == ("balsam top: error: standard output is not a terminal: "
                           "use --once for a single frame\n")


def test_bad_interval_is_refused(db):
    proc = run_balsam("top", "--once", "--interval", "0")
    assert proc.returncode == 2 and "--interval must be a positive" in proc.stderr


class Pty:
    """``balsam top`` in a pseudo-terminal of its own (controlling terminal, so Ctrl-C sends SIGINT)."""

    def __init__(self, *args: str, cols: int = 80, rows: int = 24, env: Any = None) -> None:
        self.master, self.slave = os.openpty()
        self.resize(cols, rows)
        self.attrs_before = termios.tcgetattr(self.slave)

        def controlling_tty() -> None:  # runs in the child after setsid()
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        self.proc = subprocess.Popen([sys.executable, "-m", "balsam", "top", *args],
                                     stdin=self.slave, stdout=self.slave, stderr=self.slave,
                                     start_new_session=True, preexec_fn=controlling_tty,
                                     env=dict(os.environ, **(env or {})))
        self.output = b""

    def resize(self, cols: int, rows: int) -> None:
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def read_until(self, predicate: Any, timeout: float = 20) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.output.decode(errors="replace")
            if predicate(text):
                return text
            ready, _, _ = select.select([self.master], [], [], 0.1)
            if ready:
                self.output += os.read(self.master, 65536)
        raise AssertionError(f"timed out; the terminal showed:\n{self.output.decode(errors='replace')}")

    def frames(self) -> list[str]:
        return self.output.decode(errors="replace").split("\x1b[H")[1:]

    def send_and_wait(self, data: bytes, timeout: float = 30.0) -> int:
        os.write(self.master, data)
        start = time.monotonic()
        while self.proc.poll() is None and time.monotonic() - start < timeout:
            ready, _, _ = select.select([self.master], [], [], 0.05)
            if ready:
                self.output += os.read(self.master, 65536)
        assert self.proc.poll() is not None, f"still running {timeout} s after {data!r}"
        while select.select([self.master], [], [], 0.1)[0]:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:
                break
            if not chunk:
                break
            self.output += chunk
        return self.proc.returncode

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)
        os.close(self.slave)


@pytest.fixture
def pty_top():
    started: list[Pty] = []

    def start(*args: str, **kw: Any) -> Pty:
        started.append(Pty(*args, **kw))
        return started[-1]

    yield start
    for p in started:
        p.close()


def frame_lines(frame: str) -> list[str]:
    """The visible lines of one redraw (each starts by clearing its line)."""
    body = frame.split("\x1b[J")[0]
    return [ln.replace("\x1b[K", "") for ln in body.replace("\r", "").split("\n")]


def test_live_view_refreshes_then_q_quits_and_restores_the_terminal(db, cursor, pty_top):
    jobs = add_jobs(cursor, 3, name="w", state="PREPROCESSED")
    top = pty_top("--interval", "0.5")
    top.read_until(lambda t: t.count("3 jobs") >= 2)  # two frames drawn
    assert top.output.startswith(b"\x1b[?1049h\x1b[?25l")  # alternate screen, cursor hidden
    first = frame_lines(top.frames()[0])
    assert len(first) <= 24 and all(len(ln) <= 80 for ln in first), first
    assert "every 0.5s  q: quit" in first[0]
    lifecycle.transition(cursor, jobs[:1], "RUNNING")
    add_jobs(cursor, 2, name="new")
    text = top.read_until(lambda t: "5 jobs" in t)
    last = frame_lines(text.split("\x1b[H")[-1])
    assert re.search(r"\bRUNNING +1 ", "\n".join(last)), last
    assert top.send_and_wait(b"q") == 0
    assert top.output.endswith(b"\x1b[?25h\x1b[?1049l")  # main screen and cursor back
    assert termios.tcgetattr(top.slave) == top.attrs_before
    assert b"Traceback" not in top.output


def test_live_view_ctrl_c_exits_0_without_traceback(db, cursor, pty_top):
    add_jobs(cursor, 1, name="x")
    top = pty_top("--interval", "0.5")
    top.read_until(lambda t: "1 jobs" in t)
    assert top.send_and_wait(b"\x03") == 0
    assert b"Traceback" not in top.output and b"KeyboardInterrupt" not in top.output
    assert top.output.endswith(b"\x1b[?25h\x1b[?1049l")
    assert termios.tcgetattr(top.slave) == top.attrs_before


def test_live_view_follows_a_terminal_resize_and_a_short_terminal(db, cursor, pty_top):
    add_jobs(cursor, 1, name="x")
    for i in range(16):
        add_batch_job(cursor, str(1000 + i), "debug", 1, 10, "queued")
    top = pty_top("--interval", "60", cols=80, rows=24)
    top.read_until(lambda t: "\x1b[J" in t)
    frame = frame_lines(top.frames()[0])
    # 11 lines of titles and counts leave 13 of the 16 batch jobs room.
    assert len(frame) == 24 and "Batch jobs: 16 queued or running (+3 not shown)" in frame, frame
    top.resize(60, 16)  # the kernel sends SIGWINCH to the terminal's foreground process group
    # Redrawn by the resize: the next refresh is 60 s away (a bound far from the work's time).
    top.read_until(lambda t: t.count("\x1b[J") >= 2, timeout=30)
    frame = frame_lines(top.frames()[1])
    assert len(frame) == 16 and all(len(ln) <= 60 for ln in frame), frame
    assert "Batch jobs: 16 queued or running (+11 not shown)" in frame, frame
    assert top.send_and_wait(b"Q") == 0


@pytest.mark.slow
def test_live_view_survives_a_database_outage(restart_db, pty_top):
    from balsam.db import cluster

    top = pty_top("--interval", "0.3", env={"BALSAM_DB_PATH": restart_db})
    top.read_until(lambda t: "0 jobs" in t)
    cluster.stop(restart_db)
    top.read_until(lambda t: "note: refresh failed, retrying: the Balsam DB server" in t)
    cluster.start(restart_db)
    seen = len(top.output)
    top.read_until(lambda t: "\x1b[J" in t[seen:] and "refresh failed" not in t.split("\x1b[H")[-1])
    assert top.send_and_wait(b"q") == 0
    assert b"Traceback" not in top.output
