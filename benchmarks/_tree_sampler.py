"""The CPU of a launcher's process tree and of its DB server's processes, sampled from /proc
during a run (``bench_launcher_serial.py --breakdown``): per role, per task, in the steady
state."""
from __future__ import annotations

import os
import threading
import time
from collections import Counter

_TICK = os.sysconf("SC_CLK_TCK")


def _proc_stat(pid: int) -> tuple[int, float, float]:
    """(parent pid, own CPU seconds, reaped children's CPU seconds) of a live process."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[1]), sum(int(x) for x in fields[11:13]) / _TICK,
            sum(int(x) for x in fields[13:15]) / _TICK)


def _role(pid: int) -> str:
    """What a process of the launcher's tree is, from its command line and environment."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmd = fh.read().replace(b"\0", b" ").decode(errors="replace")
        if "serial_ranks" in cmd:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                rank = dict(v.split(b"=", 1) for v in fh.read().split(b"\0") if b"=" in v
                            ).get(b"PMI_RANK", b"?")
            return "master rank" if rank == b"0" else "worker ranks"
    except OSError:
        return "?"
    for needle, role in (("watchdog", "watchdogs"), ("hydra_pmi_proxy", "mpiexec + proxy"),
                         ("mpiexec", "mpiexec + proxy"), ("balsam launcher", "launcher")):
        if needle in cmd:
            return role
    return "other"


class TreeSampler:
    """Samples every ``interval`` s the CPU of the process tree under ``root`` and of the DB
    server's processes (by ``application_name``), for :meth:`steady` afterwards."""

    def __init__(self, root: int, db_path: str, interval: float = 0.05) -> None:
        from balsam.db import cluster, postmaster
        from balsam.db.connect import connect

        self.root, self.interval = root, interval
        self.server = postmaster.read(cluster.data_dir(db_path)).pid
        self.conn = connect(db_path)
        self.conn.autocommit = True
        self.roles: dict[int, str] = {}
        self.samples: list[tuple[float, dict[int, tuple[float, float]]]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _tree(self) -> dict[int, tuple[float, float]]:
        """The live processes under the launcher and the server (server pids negated), walked
        through /proc's children lists (cheap: no scan of every process)."""
        found: dict[int, tuple[float, float]] = {}
        for top, sign in ((self.root, 1), (self.server, -1)):
            todo = [top]
            while todo:
                pid = todo.pop()
                try:
                    _, own, reaped = _proc_stat(pid)
                    with open(f"/proc/{pid}/task/{pid}/children") as fh:
                        todo += [int(p) for p in fh.read().split()]
                except (OSError, IndexError, ValueError):  # exited meanwhile
                    continue
                found[sign * pid] = (own, reaped)
        return found

    def _run(self) -> None:
        with self.conn.cursor() as cur:
            while not self.stop.is_set():
                now, tree = time.time(), self._tree()
                if any(pid < 0 and pid not in self.roles for pid in tree):
                    cur.execute("SELECT pid, application_name, backend_type "
                                "FROM pg_stat_activity")
                    for pid, app, kind in cur.fetchall():
                        if app or kind != "client backend":  # a client names itself once up
                            self.roles[-pid] = "server: " + (
                                "launcher's transition workers" if app == "balsam-transitions"
                                else app or kind)
                for pid in tree:
                    if pid > 0 and pid not in self.roles:
                        self.roles[pid] = _role(pid)
                self.samples.append((now, tree))
                self.stop.wait(self.interval)

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.conn.close()

    def steady(self, first: float, last: float, count: int) -> dict[str, float]:
        """CPU ms per task of each role between the first and last samples inside
        [first, last] (tasks in that window: ``count`` times its share of the run)."""
        inside = [s for s in self.samples if first <= s[0] <= last]
        if len(inside) < 2:
            return {}
        (t0, a), (t1, z) = inside[0], inside[-1]
        tasks = count * (t1 - t0) / (last - first)
        cpu: Counter[str] = Counter()
        for pid, (own, reaped) in z.items():
            own0, reaped0 = a.get(pid, (0.0, 0.0))
            role = self.roles.get(pid, "server: other" if pid < 0 else "?")
            cpu[role] += own - own0
            if role == "worker ranks":
                cpu["tasks"] += reaped - reaped0
        # server processes that exited in the window are in the postmaster's reaped time
        cpu["server: other"] += z.get(-self.server, (0, 0))[1] - a.get(-self.server, (0, 0))[1]
        return {role: 1e3 * seconds / tasks for role, seconds in cpu.items() if seconds > 0}
