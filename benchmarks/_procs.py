"""A benchmark's child process in a session of its own, so that nothing it starts outlives it.

A launcher (mpiexec and its ranks), Parsl (its interchange, and a worker pool that LocalProvider
starts in a process group of its own) or HyperQueue's cluster may leave processes behind when
the run times out, fails or is interrupted; ``subprocess.run(timeout=...)`` kills only the direct
child. :func:`run_in_session` starts the child with ``start_new_session=True`` and, whatever
happens, ends what is left of it: its descendants (the launcher's mpiexec and ranks start
sessions of their own) and the members of its session (orphans keep their session: Parsl's
worker pool, whose parent exited), SIGTERM then SIGKILL after a grace period, found by process
and session id in ``/proc``: only processes this benchmark started, never by name.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterable
from typing import Any, Callable, Optional

GRACE_SECONDS = 10.0  # after SIGTERM: time for Parsl's and HyperQueue's own clean-up


class RunTimeout(SystemExit):
    """A benchmark's child did not finish in time (a SystemExit: a script that does not catch it
    exits with its one-line message, its ``finally`` blocks removing the throwaway DB)."""


def _processes() -> dict[int, tuple[int, int, str]]:
    """Every live (not zombie) process: pid -> (parent pid, session id, start time)."""
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:  # exited meanwhile
            continue
        if fields[0] != "Z":
            found[int(name)] = (int(fields[1]), int(fields[3]), fields[19])
    return found


def start_of(pid: int) -> Optional[str]:
    """Process ``pid``'s start time (field 22 of its stat; a zombie has one), None if none."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def family(root: int, root_start: Optional[str] = None) -> dict[int, str]:
    """``root``'s live descendants (also those that started a session of their own, as
    mpiexec and its ranks do) and every live member of the session ``root`` leads (also those
    orphaned when their parent died): pid -> start time, so a reused pid is not mistaken.
    ``root_start``: ``root``'s start time, read before it was reaped. Once ``root`` names a
    process started at another time, the session was over (its id is reserved while it has a
    member) and that one's is another's: nothing is returned."""
    if root_start is not None and start_of(root) not in (None, root_start):
        return {}
    table = _processes()
    members = {pid for pid, (_, sid, _) in table.items() if sid == root}
    if root in table:
        members.add(root)
    todo = list(members)
    while todo:
        parent = todo.pop()
        for pid, (ppid, _, _) in table.items():
            if ppid == parent and pid not in members:
                members.add(pid)
                todo.append(pid)
    return {pid: table[pid][2] for pid in members}


def _alive(known: dict[int, str]) -> dict[int, str]:
    table = _processes()
    return {pid: start for pid, start in known.items() if pid in table and table[pid][2] == start}


def _signal_all(pids: Iterable[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def _wait_stopped(pid: int, timeout: float = 10.0) -> None:
    """Wait (bounded: a process that cannot stop is ended all the same) until ``pid`` is
    stopped or gone: a signal is delivered after ``kill`` returns."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                if fh.read().rsplit(")", 1)[1].split()[0] in ("T", "Z", "X"):
                    return
        except OSError:
            return
        time.sleep(0.002)


def end_session(root: int, grace: float = GRACE_SECONDS,
                root_start: Optional[str] = None) -> int:
    """End the :func:`family` of ``root`` (started with ``start_new_session``): SIGTERM to
    ``root`` if it lives (its own shutdown stops what it started), else to every member; then
    SIGKILL to whatever is still there after ``grace`` seconds. Returns how many processes
    there were. ``root_start``: see :func:`family` (needed once ``root`` may have been reaped)."""
    known = family(root, root_start)
    if not known:
        return 0
    if root in known:  # stopped, it starts nothing more: a child it forked after the first
        _signal_all([root], signal.SIGSTOP)  # look (and that left the session) is seen now,
        _wait_stopped(root)                  # before the root's end orphans it
        known.update(family(root, root_start))
        _signal_all([root], signal.SIGTERM)
        _signal_all([root], signal.SIGCONT)
    else:
        _signal_all(known, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        known.update(family(root, root_start))
        if not _alive(known):
            return len(known)
        time.sleep(0.1)
    known.update(family(root, root_start))
    _signal_all(_alive(known), signal.SIGKILL)
    _wait_gone(known)
    return len(known)


def _wait_gone(known: dict[int, str], timeout: float = 10.0) -> None:
    """Wait (bounded) until every process in ``known`` is gone or a zombie: SIGKILL returns
    before its target has run its exit, which on a loaded machine may take a while."""
    end = time.monotonic() + timeout
    while _alive(known) and time.monotonic() < end:
        time.sleep(0.002)


def run_in_session(argv: list[str], *, what: str, timeout: float, input: Optional[str] = None,
                   check: bool = False, grace: float = GRACE_SECONDS,
                   on_start: Optional[Callable[[int], None]] = None, **popen: Any
                   ) -> subprocess.CompletedProcess:
    """``subprocess.run(argv, capture_output=True, text=True)`` in a new session. On timeout,
    raise :class:`RunTimeout` naming ``what`` and the load; on any exit (also an interrupt),
    end the child's remaining :func:`family` (``grace``: seconds between SIGTERM and SIGKILL; a
    line says how many processes outlived a finished child).
    ``check``: a non-zero exit raises SystemExit with the end of its stderr. ``on_start``:
    called with the child's pid once it started (e.g. to sample its process tree)."""
    proc = subprocess.Popen(argv, start_new_session=True, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE,
                            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                            **popen)
    root_start = start_of(proc.pid)  # not reaped yet: names the session after the reap too
    try:
        if on_start is not None:
            on_start(proc.pid)
        out, err = proc.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        ended = end_session(proc.pid, grace, root_start)
        try:  # an escaped process may still hold its pipes: do not wait for their end forever
            proc.communicate(timeout=GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            proc.wait()
        load = os.getloadavg()[0]
        raise RunTimeout(f"{what} did not finish in {timeout:.0f} s (load {load:.1f}); its "
                         f"{ended} process(es) were ended") from None
    except BaseException:
        end_session(proc.pid, grace, root_start)
        proc.wait()
        raise
    strays = end_session(proc.pid, grace, root_start)
    if strays:
        print(f"# {what}: {strays} process(es) outlived it and were ended", flush=True)
    if check and proc.returncode != 0:
        tail = (err.strip().splitlines() or ["no output"])[-1]
        raise SystemExit(f"{what} exited {proc.returncode}: {tail}")
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def rerun_with_source(source: str, script: str) -> None:
    """``--compare-with SOURCE``: run ``script`` again with this process's other arguments and
    the balsam package of tree ``source`` first on ``PYTHONPATH`` (the "before" of a same-run
    before/after), then return (the caller runs this tree: the "after")."""
    import sys

    name = os.path.basename(script).removesuffix(".py")
    if not os.path.isdir(os.path.join(source, "balsam")):
        raise SystemExit(f"{name}: --compare-with {source}: no balsam/ there")
    argv = [a for i, a in enumerate(sys.argv[1:]) if not a.startswith("--compare-with")
            and not (i and sys.argv[i] == "--compare-with")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (os.path.abspath(source), os.environ.get("PYTHONPATH")) if p))
    print(f"## before: {source}", flush=True)
    subprocess.run([sys.executable, os.path.abspath(script), *argv], env=env, check=True)
    print("## after: this tree", flush=True)
