"""The serial launcher's start-up, by process: CPU used until its ensemble runs (issue 16).

``bench_launcher_serial.py --breakdown`` samples the launcher's process tree and the DB server's
processes every 50 ms (``TreeSampler``); from those samples :func:`start_cpu` gives, for each
part (launcher, master rank, worker ranks, watchdogs, mpiexec and its proxy, the server's
connections), the CPU it used from the launcher's start until the ensemble's first RUNNING
(:func:`ensemble_first_running`): the boot that competes for the node's cores with the launcher's
own first tasks. Printed, never asserted.
"""
from __future__ import annotations

import statistics
from collections import Counter
from typing import Any

Samples = list[tuple[float, dict[int, tuple[float, float]]]]
"""(epoch time, {pid: (own CPU s, reaped children's CPU s)}); server pids negated."""


def ensemble_first_running(conn: Any, own: int) -> float:
    """Epoch time of the first RUNNING the ensemble recorded: the one after the ``own`` that
    the launcher's warm start recorded (they come first: the ensemble's needs a claim, a start
    and a report after rank 0 got the session the warm start opened)."""
    from balsam.core import schema

    with conn.cursor() as cur:
        cur.execute("SELECT extract(epoch FROM timestamp) FROM " + schema.EVENT_TABLE
                    + " WHERE to_state = 'RUNNING' ORDER BY timestamp OFFSET %s LIMIT 1", [own])
        row = cur.fetchone()
    conn.commit()
    return float(row[0])


def start_cpu(samples: Samples, roles: dict[int, str], server: int, until: float) -> dict[str, float]:
    """CPU ms by part from the launcher's start to the first sample at or after ``until``:
    the launcher's tree in full (every process in it started with the launcher), the server's
    processes from the first sample (``server``: the postmaster's pid, whose reaped children's
    time counts connections that ended meanwhile). Empty without a sample that late."""
    after = [s for s in samples if s[0] >= until]
    if not samples or not after:
        return {}
    first, last = samples[0][1], after[0][1]
    cpu: Counter[str] = Counter()
    for pid, (own, _reaped) in last.items():
        role = roles.get(pid, "server: other" if pid < 0 else "?")
        base = first.get(pid, (0.0, 0.0))[0] if pid < 0 else 0.0
        cpu[role] += own - base
    cpu["server: other"] += last.get(-server, (0, 0))[1] - first.get(-server, (0, 0))[1]
    return {role: 1e3 * seconds for role, seconds in cpu.items() if seconds > 0}


def print_start_cpu(rounds: list[dict[str, float]]) -> None:
    """Medians over ``rounds`` of the ``start: PART`` keys (CPU ms until the ensemble's first
    RUNNING) and of ``ensemble_first`` (seconds after the start)."""
    roles = sorted({k for m in rounds for k in m if k.startswith("start: ")})
    if not roles:
        return
    parts = {k[7:]: statistics.median(m.get(k, 0.0) for m in rounds) for k in roles}
    tree = sum(v for k, v in parts.items() if not k.startswith("server"))
    server = sum(v for k, v in parts.items() if k.startswith("server"))
    first = statistics.median(m["ensemble_first"] for m in rounds)
    print(f"start CPU until the ensemble's first RUNNING (median {first:.2f} s after start), ms: "
          f"launcher tree {tree:.0f} + DB server {server:.0f} = {tree + server:.0f}; by part:")
    for part, ms in sorted(parts.items(), key=lambda kv: -kv[1]):
        if ms >= 0.5:
            print(f"    {part:34s} {ms:6.1f}")


def compile_bytecode(trees: list[str]) -> str:
    """Compile the ``balsam`` package of each source tree to bytecode (``__pycache__``), as an
    installed package has it (pip compiles at install; an editable install or a ``git archive``
    has none, and with ``PYTHONDONTWRITEBYTECODE`` set every process then compiles each module
    it imports at every start: ~50-80 ms of CPU for the launcher and each rank, measured in
    session 18). A line saying what was done."""
    import compileall
    import os

    for tree in trees:
        compileall.compile_dir(os.path.join(tree, "balsam"), quiet=2)
    off = os.environ.get("PYTHONDONTWRITEBYTECODE")
    return (f"# bytecode compiled before the rounds in {', '.join(trees)} (as installed; "
            f"PYTHONDONTWRITEBYTECODE={off or '(unset)'} here)")
