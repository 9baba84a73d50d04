"""Serial mode's warm pool driven directly (no MPI, no database: the tasks' rows are given):
a task goes to the idle warm process already pinned to its cores, so with one process per core
each keeps its core instead of being moved at every task."""
from __future__ import annotations

import os
import sys
import time

import pytest

from balsam.launcher.warm_pool import WarmPool, WarmTask
from balsam.site import pyfunc

APP = '''from balsam.site import ApplicationDefinition


class Pid(ApplicationDefinition):
    def run(self):
        import os
        return os.getpid()
'''


def finish(pool: WarmPool, task: WarmTask, timeout: float = 30.0) -> int:
    end = time.monotonic() + timeout
    while task.poll() is None:
        assert time.monotonic() < end, "the warm task did not reply"
        time.sleep(0.005)
    os.close(task.fd)
    pool.finished(task, clean=True)
    assert task.returncode == 0 and task.outcome is not None
    return pyfunc.deserialize(task.outcome[2])


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to pin to")
def test_a_task_goes_to_the_idle_warm_process_already_on_its_cores(tmp_path):
    site = tmp_path / "site"
    (site / "apps").mkdir(parents=True)
    (site / "apps" / "fn.py").write_text(APP)
    cpus = sorted(os.sched_getaffinity(0))[:2]
    pool = WarmPool({"PATH": os.environ["PATH"]}, str(tmp_path), sys.executable)
    row = ("fn.Pid", "{}", "{}", "{}", pyfunc.serialize({}))
    env = {"BALSAM_DB_PATH": str(site)}

    def start(name: str, cpu: int) -> WarmTask:
        wd = str(tmp_path / name)
        return pool.start(name, env, wd, os.path.join(wd, "out"), [cpu], row)

    try:
        first, second = start("a", cpus[0]), start("b", cpus[1])  # two processes, one per core
        pid_on = {cpus[0]: finish(pool, first), cpus[1]: finish(pool, second)}
        assert pid_on[cpus[0]] != pid_on[cpus[1]]
        for n, cpu in enumerate([cpus[0], cpus[1], cpus[1], cpus[0]]):
            task = start(f"t{n}", cpu)
            assert finish(pool, task) == pid_on[cpu]
            assert os.sched_getaffinity(pid_on[cpu]) == {cpu}
        assert pool.started == 2
    finally:
        pool.close()
