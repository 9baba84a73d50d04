"""The documented Python API in a real Jupyter kernel (ipykernel, driven by jupyter_client).

A kernel runs every cell inside its asyncio event loop, where Django refuses ORM calls unless
Balsam's bootstrap allows them (:func:`balsam.db.django_setup.allow_orm_in_notebook`). The kernel
gets the test DB through ``BALSAM_DB_PATH`` and ``HOME`` only, as a user's notebook server
would, and never ``DJANGO_ALLOW_ASYNC_UNSAFE``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

jupyter_client = pytest.importorskip("jupyter_client.manager", reason="needs ipykernel (test extra)")
pytest.importorskip("ipykernel", reason="needs ipykernel (test extra)")

CELL_TIMEOUT = 120

SETUP = """
from balsam.core.models import BalsamJob, ApplicationDefinition, END_STATES
from balsam.launcher import dag
from balsam.launcher.futures import FutureTask, wait
import json, os
app, _ = ApplicationDefinition.objects.get_or_create(name="sim", defaults={"executable": "sim.x"})
"""

JOBS = """
parent = BalsamJob(name="prep", workflow="nb", application="sim"); parent.save()
child = BalsamJob(name="run", workflow="nb", application="sim", parents=[parent.pk]); child.save()
out = {
    "parents": [j.name for j in child.get_parents()],
    "children": [j.name for j in parent.get_children()],
    "workdir": child.working_directory.startswith(os.path.join(os.environ["BALSAM_DB_PATH"],
                                                               "data", "nb")),
}
child.update_state("FAILED", "gave up")
child.refresh_from_db()
out["state"] = child.state
out["history_lines"] = len(child.state_history.splitlines())
out["state_times"] = sorted(child.get_state_times())
out["runtime"] = child.runtime_seconds
out["open"] = BalsamJob.objects.filter(workflow="nb").exclude(state__in=END_STATES).count()
print(json.dumps(out, default=str))
"""

BULK_AND_DAG = """
made = BalsamJob.objects.bulk_create(
    [BalsamJob(name=f"b{i}", workflow="nb-bulk", application="sim") for i in range(50)])
first = dag.add_job(name="first", workflow="nb-dag", application="sim")
second = dag.add_job(name="second", workflow="nb-dag", application="sim", parents=[first])
third = dag.add_job(name="third", workflow="nb-dag", application="sim")
dag.add_dependency(second, third)
killed = dag.kill(first)
print(json.dumps({
    "bulk": BalsamJob.objects.filter(workflow="nb-bulk").count(),
    "third_parents": [j.name for j in third.get_parents()],
    "killed": len(killed),
    "states": sorted(BalsamJob.objects.filter(workflow="nb-dag").values_list("state", flat=True)),
}))
"""

FUTURES_AND_ANALYTICS = """
from django.db import connection
from balsam.core import analytics
job = dag.add_job(name="fut", workflow="nb-fut", application="sim")
future = FutureTask(job, lambda j: "done " + j.name, lambda j: "failed " + j.name)
job.update_state("FAILED", "for the future")
result = wait([future], timeout=30, poll_period=0.05)
with connection.cursor() as cur:
    summary = analytics.summary(cur)
times, counts = analytics.throughput_report(BalsamJob.objects.filter(workflow="nb"), state="FAILED")
BalsamJob.objects.filter(workflow="nb-bulk").delete()
print(json.dumps({
    "future": future.result(),
    "failed": len(result.failed),
    "total": summary["total"],
    "failed_events": counts[-1] if counts else 0,
    "left_in_bulk": BalsamJob.objects.filter(workflow="nb-bulk").count(),
}))
"""


class Kernel:
    """A started ipykernel and its client; :meth:`run` executes one cell."""

    def __init__(self, env: dict[str, str]) -> None:
        self.manager, self.client = jupyter_client.start_new_kernel(
            kernel_name="python3", env=env, startup_timeout=CELL_TIMEOUT)

    def run(self, code: str) -> str:
        """Run ``code`` as a cell; its printed output, or a failure naming the cell's error."""
        printed: list[str] = []
        errors: list[str] = []

        def on_output(msg: dict[str, Any]) -> None:
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream" and content["name"] == "stdout":
                printed.append(content["text"])
            elif kind == "error":
                errors.append(f"{content['ename']}: {content['evalue']}")

        reply = self.client.execute_interactive(code, timeout=CELL_TIMEOUT, output_hook=on_output)
        if errors or reply["content"]["status"] != "ok":
            pytest.fail(f"the cell failed in the kernel: {errors or reply['content']}")
        return "".join(printed)

    def close(self) -> None:
        self.client.stop_channels()
        self.manager.shutdown_kernel(now=True)


@pytest.fixture
def kernel(db: str, test_home: str) -> Iterator[Kernel]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("BALSAM_", "DJANGO_")) or k == "BALSAM_DB_DRIVER"}
    env.update(BALSAM_DB_PATH=db, HOME=test_home)
    k = Kernel(env)
    try:
        yield k
    finally:
        k.close()


def test_the_documented_api_runs_in_notebook_cells(kernel: Kernel) -> None:
    loop = kernel.run("import asyncio; asyncio.get_running_loop(); print('loop running')")
    assert loop.strip() == "loop running"  # the condition that made Django refuse every call
    kernel.run(SETUP)
    jobs = json.loads(kernel.run(JOBS))
    assert jobs["parents"] == ["prep"] and jobs["children"] == ["run"] and jobs["workdir"]
    assert jobs["state"] == "FAILED" and jobs["history_lines"] == 3
    assert jobs["open"] == 1  # the parent; the child failed
    assert jobs["state_times"] == ["CREATED", "FAILED"] and jobs["runtime"] is None  # never ran
    dag_out = json.loads(kernel.run(BULK_AND_DAG))
    assert dag_out["bulk"] == 50
    assert dag_out["third_parents"] == ["second"]
    assert dag_out["killed"] == 3  # first and, recursively, its descendants
    assert dag_out["states"] == ["USER_KILLED"] * 3
    later = json.loads(kernel.run(FUTURES_AND_ANALYTICS))
    assert later["future"] == "failed fut" and later["failed"] == 1
    assert later["total"] == 56 and later["failed_events"] == 1 and later["left_in_bulk"] == 0


def test_the_kernel_is_not_given_the_django_switch(kernel: Kernel) -> None:
    """Balsam sets it itself, only once an IPython shell imports Balsam."""
    before = kernel.run("import os; print(os.environ.get('DJANGO_ALLOW_ASYNC_UNSAFE'))")
    kernel.run("import balsam.core.models")
    after = kernel.run("import os; print(os.environ.get('DJANGO_ALLOW_ASYNC_UNSAFE'))")
    assert (before.strip(), after.strip()) == ("None", "true")


def test_outside_an_ipython_shell_django_still_guards_async_code(db: str) -> None:
    """The switch is not set for asyncio programs: there Django's guard keeps its purpose."""
    code = ("import asyncio, os\n"
            "from django.core.exceptions import SynchronousOnlyOperation\n"
            "from balsam.core.models import BalsamJob\n"
            "async def main():\n"
            "    try:\n        BalsamJob.objects.count()\n"
            "    except SynchronousOnlyOperation:\n        print('refused')\n"
            "asyncio.run(main())\n"
            "print(os.environ.get('DJANGO_ALLOW_ASYNC_UNSAFE'))\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")}
    env["BALSAM_DB_PATH"] = db
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=120)
    assert (proc.returncode, proc.stdout.split()) == (0, ["refused", "None"]), proc.stderr
