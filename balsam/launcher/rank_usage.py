"""What a rank spent, for its exit log line: CPU by thread, context switches, page faults.

A serial worker rank's CPU for the same tasks varied threefold from one benchmark round to the
next (issue 16, session 20); its exit line now says where it went (:func:`usage_summary`):
the main thread (the Python loop, MPI), the other threads by name (the native spawning
threads, the preparer, MPI's own), the switches (voluntary: waits; involuntary: preempted)
and the minor page faults. Read from ``/proc/self/task`` once, at the rank's end (~0.1 ms);
empty where ``/proc`` is not (the counts of :func:`resource.getrusage` remain).
"""
from __future__ import annotations

import os
import resource
from typing import Optional

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PR_SET_NAME = 15  # <linux/prctl.h>


def name_thread(name: str) -> None:
    """Give the calling thread ``name`` (at most 15 bytes) as the kernel shows it
    (``/proc/.../comm``, ``ps -L``, ``top -H``, :func:`thread_cpu`): Python's threads keep the
    process's name. Nothing happens where ``prctl`` is missing."""
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_NAME, name.encode()[:15], 0, 0, 0)
    except (AttributeError, OSError):  # not Linux
        pass


def thread_cpu() -> dict[str, float]:
    """CPU seconds of this process's live threads, by name (``main`` for the main thread;
    threads of one name added up). Threads already ended are not listed."""
    found: dict[str, float] = {}
    me = os.getpid()
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return {}
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/stat") as fh:
                stat = fh.read()
        except OSError:  # ended meanwhile
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat.rsplit(")", 1)[1].split()
        key = "main" if int(tid) == me else name
        found[key] = found.get(key, 0.0) + (int(fields[11]) + int(fields[12])) / _TICK
    return found


def usage_summary(threads: Optional[dict[str, float]] = None) -> str:
    """One line: CPU by thread (``threads``: as :func:`thread_cpu` found them earlier, while
    threads since ended still ran; else now), voluntary/involuntary context switches, minor
    faults."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    listed = ", ".join(f"{name} {cpu:.2f} s" for name, cpu in
                       sorted((threads or thread_cpu()).items(), key=lambda item: -item[1]))
    return (f"threads: {listed or 'unknown'}; {usage.ru_nvcsw} voluntary and "
            f"{usage.ru_nivcsw} involuntary switches, {usage.ru_minflt} minor faults")
