"""The serial benchmark's view of its worker ranks (issue 16, session 20): their loop counts
and CPU by thread from their exit lines (:func:`worker_loop`), and the price of a task's
directory and output file on the file system just before a round (:func:`dir_cost`).

A worker rank's CPU for the same 2,000 tasks varied threefold between rounds; nearly all of
the difference was the kernel making the tasks' directories and output files (the threads
``task-dirs`` and ``balsam-spawn``), not the loop (``main``): benchmarks/README.md, "Issue 16,
session 20 (branch s20-workercpu)".
"""
from __future__ import annotations

import os
import re
import resource
from collections import Counter


def worker_loop(log: str) -> dict[str, float]:
    """The worker ranks' loop counts and CPU by thread, from their exit lines (summed over
    the ranks; keys ``loop: ...``; none from a tree whose ranks do not log them)."""
    found: Counter[str] = Counter()
    for line in re.findall(r"serial worker \d+ .*exits: .*; loop: (.*)", log):
        counts, _, rest = line.partition("; threads: ")
        for n, key in re.findall(r"(\d+) (\w+)", counts):
            found[f"loop: {key}"] += int(n)
        threads, _, switches = rest.partition("; ")
        for name, cpu in re.findall(r"([^,]+?) ([\d.]+) s", threads):
            found[f"loop: {name.strip()} CPU"] += float(cpu)
        for n, key in re.findall(r"(\d+) (voluntary|involuntary|minor)", switches):
            found[f"loop: {key}"] += int(n)
    return dict(found)


def dir_cost(db_path: str, tag: str, count: int = 100) -> float:
    """CPU (us, this thread's) to make one task's directory and output file in the DB's data
    directory now, as a worker does: the price varies with the file system's state (ext4
    without a journal scans past inodes deleted in the last minutes: benchmarks/README.md,
    "Issue 16, session 20"). The probe's files stay until the DB is removed (a deletion would
    make the next allocations dearer)."""
    base = os.path.join(db_path, "data", f"probe-{tag}")
    os.makedirs(base)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    before = resource.getrusage(resource.RUSAGE_THREAD)
    for i in range(count):
        made = os.path.join(base, f"p{i}")
        os.mkdir(made)
        os.close(os.open(os.path.join(made, "p.out"), flags, 0o644))
    after = resource.getrusage(resource.RUSAGE_THREAD)
    spent = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return max(0.0, 1e6 * spent / count)


def worker_line(m: dict[str, float]) -> str:
    """One round's file-system price and the worker ranks' loop and threads, for its line."""
    line = f"a directory and output file cost {m['fs_us']:.0f} us of CPU just before"
    if "loop: iterations" not in m:  # a tree whose ranks do not log them
        return line
    return line + "; worker " + ", ".join(
        f"{k[6:]} {v:.2f} s" if k.endswith("CPU") else f"{k[6:]} {v:.0f}"
        for k, v in m.items() if k.startswith("loop: "))
