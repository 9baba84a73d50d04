"""Helpers for tests on a real Slurm (the one-machine cluster of ``tests/infra/slurm.sh``).

``slurm_unavailable_reason()`` says why no usable Slurm is here (None when there is one): the
tests that need it take the ``slurm`` fixture (:func:`slurm_fixture`, registered by importing
it into the test module), which skips with that reason. ``tests/run.sh`` starts the cluster
when it runs as root and passes the reason it could not in ``BALSAM_TEST_SLURM_UNAVAILABLE``.

:class:`Slurm` submits batch jobs (``sbatch``), waits for them (``squeue`` while they are
queued or running; ``scontrol show job``, then the job completion log through ``sacct -c``,
then plain ``sacct`` for the final state) and cancels every job a test submitted when the test
ends (and, with :meth:`Slurm.watch`, every job submitted from a directory, e.g. by a service
under test), so a failing test never leaves nodes busy for the next one.

What a batch job running Balsam needs (see :func:`batch_env`): the emulated nodes share this
machine's file systems, so the DB directory and the working directories are reachable as
they are, and the DB server (listening on TCP on all addresses) is reached through the
server-info host name, which resolves to this machine on every node. The job must see the
test's ``BALSAM_DB_PATH`` and ``HOME`` (the session's temporary home holding the DB index),
and find this interpreter's ``balsam`` and the mpich wheel's ``mpiexec`` first on ``PATH``.
"""
from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Optional

import pytest
from launcher_support import wait_for

COMMAND_TIMEOUT = 30.0
"""Seconds any Slurm command may take."""

MIN_NODES = 2
"""Nodes the Slurm tests need, each idle or running jobs (other tests' jobs just queue)."""

USABLE_NODE_STATES = ("idle", "mix", "alloc", "comp")
"""``sinfo %t`` states of an answering node that takes jobs (``idle*`` is not answering)."""

FINAL_STATES = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED",
                "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE")


def slurm_command(*argv: str, timeout: float = COMMAND_TIMEOUT,
                  check: bool = True) -> subprocess.CompletedProcess:
    """Run a Slurm client command (no shell) with a timeout; raise AssertionError with its
    output if it fails and ``check`` is true."""
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, env=submit_env())
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {proc.returncode}: "
                             f"{(proc.stderr or proc.stdout).strip()}")
    return proc


def submit_env(extra: Optional[Mapping[str, str]] = None) -> dict[str, str]:
    """This process's environment without any Slurm job or ``sbatch`` variables (so commands
    never act as if inside another allocation), plus ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "SBATCH_", "SALLOC_", "SRUN_"))}
    if os.environ.get("SLURM_CONF"):
        env["SLURM_CONF"] = os.environ["SLURM_CONF"]
    env.update(extra or {})
    return env


def batch_env(db_path: str, extra: Optional[Mapping[str, str]] = None) -> dict[str, str]:
    """The environment a batch job running ``balsam`` needs (passed with ``sbatch``'s default
    ``--export=ALL``): the test's DB and HOME, and this interpreter's bin directory (``balsam``,
    the mpich wheel's ``mpiexec``) first on PATH."""
    bindir = os.path.dirname(sys.executable)
    path = os.environ.get("PATH", "")
    return submit_env({"BALSAM_DB_PATH": db_path, "HOME": os.environ["HOME"],
                       "PATH": f"{bindir}:{path}" if path else bindir, **(extra or {})})


@functools.lru_cache(maxsize=1)
def slurm_unavailable_reason() -> Optional[str]:
    """Why the Slurm tests cannot run here, or None if a controller answers and at least
    :data:`MIN_NODES` nodes take jobs."""
    noted = os.environ.get("BALSAM_TEST_SLURM_UNAVAILABLE", "").strip()
    suffix = f" ({noted})" if noted else ""
    missing = [c for c in ("sbatch", "squeue", "scontrol", "scancel", "sinfo") if not shutil.which(c)]
    if missing:
        return f"no Slurm: {', '.join(missing)} not installed{suffix}"
    try:
        ping = slurm_command("scontrol", "ping", timeout=10, check=False)
        if "is UP" not in ping.stdout:
            return f"no Slurm: slurmctld does not answer `scontrol ping`{suffix}"
        nodes = slurm_command("sinfo", "-h", "-N", "-o", "%N %t", timeout=10, check=False)
    except subprocess.TimeoutExpired:
        return f"no Slurm: `scontrol ping`/`sinfo` timed out{suffix}"
    usable = [line.split()[0] for line in nodes.stdout.splitlines()
              if len(line.split()) == 2 and line.split()[1] in USABLE_NODE_STATES]
    if len(usable) < MIN_NODES:
        return (f"no Slurm: {len(usable)} usable node(s), the tests need {MIN_NODES}: "
                f"{' '.join(nodes.stdout.split()) or nodes.stderr.strip()}")
    return None


@dataclass
class JobInfo:
    """A batch job as Slurm reports it: ``state`` (e.g. RUNNING, COMPLETED, CANCELLED),
    ``exit_code`` ("0:0"), ``nodes`` (expanded host names) and where it came from."""

    job_id: str
    state: str
    exit_code: str = ""
    nodes: list[str] = field(default_factory=list)
    source: str = ""


def expand_nodelist(nodelist: str) -> list[str]:
    """Host names of a Slurm node list (``n[1-2]`` -> n1, n2) as ``scontrol show hostnames``
    expands them."""
    if not nodelist or nodelist in ("(null)", "None assigned"):
        return []
    return slurm_command("scontrol", "show", "hostnames", nodelist).stdout.split()


def _fields(text: str) -> dict[str, str]:
    return dict(m.groups() for m in re.finditer(r"(\w+)=(\S*)", text))


def job_info(job_id: str) -> Optional[JobInfo]:
    """The job's current or final state: ``scontrol show job`` (for MinJobAge after the end),
    else the job completion log (``sacct -c``, root or its writers only), else ``sacct``
    (needs slurmdbd). None if no source knows the job."""
    shown = slurm_command("scontrol", "-o", "show", "job", job_id, check=False)
    if shown.returncode == 0 and shown.stdout.strip():
        f = _fields(shown.stdout)
        return JobInfo(job_id, f.get("JobState", ""), f.get("ExitCode", ""),
                       expand_nodelist(f.get("NodeList", "")), "scontrol")
    for argv, source in ((["sacct", "-c"], "sacct -c"), (["sacct", "-X"], "sacct")):
        out = slurm_command(*argv, "-j", job_id, "-n", "-P", "-o", "jobid,state,exitcode,nodelist",
                            check=False)
        rows = [r.split("|") for r in out.stdout.splitlines() if r.split("|")[0] == job_id]
        if out.returncode == 0 and rows:
            jid, state, code, nodelist = rows[-1][:4]
            return JobInfo(jid, state.split()[0], code, expand_nodelist(nodelist), source)
    return None


def in_queue(job_id: str) -> bool:
    """True while ``squeue`` lists the job as pending, running or completing."""
    out = slurm_command("squeue", "-h", "-j", job_id, "-o", "%T", check=False)
    return out.returncode == 0 and bool(out.stdout.strip())


class Slurm:
    """Submits batch jobs for one test and cancels whatever of them still runs at its end."""

    def __init__(self) -> None:
        self.submitted: list[str] = []
        self.watched: list[str] = []

    def watch(self, directory: str) -> None:
        """Also cancel, at the end of the test, every job submitted from ``directory`` or below
        (jobs that code under test submitted, e.g. from a DB's ``qsubmit/``)."""
        self.watched.append(os.path.realpath(directory))

    def jobs_from(self, directory: str) -> list[str]:
        """Ids of the queued or running jobs submitted from ``directory`` or below."""
        out = slurm_command("squeue", "-h", "-o", "%i %Z", check=False).stdout
        top = os.path.realpath(directory)
        ids = []
        for line in out.splitlines():
            job_id, _, workdir = line.partition(" ")
            if workdir and os.path.commonpath([top, os.path.realpath(workdir)]) == top:
                ids.append(job_id)
        return ids

    def sbatch(self, script: str, *options: str, cwd: str,
               env: Optional[Mapping[str, str]] = None) -> str:
        """Submit the batch script at path ``script`` with ``options`` from directory ``cwd``
        (``env`` defaults to :func:`submit_env`); its job id."""
        proc = subprocess.run(["sbatch", "--parsable", *options, script], cwd=cwd,
                              capture_output=True, text=True, timeout=COMMAND_TIMEOUT,
                              stdin=subprocess.DEVNULL, env=dict(env or submit_env()))
        if proc.returncode != 0:
            raise AssertionError(f"sbatch {' '.join(options)} {script} exited "
                                 f"{proc.returncode}: {proc.stderr.strip()}")
        job_id = proc.stdout.strip().split(";")[0]
        self.submitted.append(job_id)
        return job_id

    def wait_running(self, job_id: str, timeout: float = 30) -> JobInfo:
        """Wait until the job runs; its info (fails if it ended or did not start in time)."""
        def running() -> Optional[JobInfo]:
            info = job_info(job_id)
            if info and info.state in FINAL_STATES:
                raise AssertionError(f"job {job_id} ended ({info.state}) before it was seen running")
            return info if info and info.state == "RUNNING" else None
        return wait_for(running, timeout, f"job {job_id} to run", interval=0.1)

    def wait_done(self, job_id: str, timeout: float = 60) -> JobInfo:
        """Wait until the job has left the queue; its final info."""
        def final() -> Optional[JobInfo]:
            info = job_info(job_id)
            return info if info and info.state in FINAL_STATES else None

        wait_for(lambda: not in_queue(job_id), timeout, f"job {job_id} to end", interval=0.1)
        return wait_for(final, 10, f"the final state of job {job_id}", interval=0.1)

    def cancel(self, job_id: str) -> None:
        slurm_command("scancel", job_id)

    def cleanup(self) -> None:
        """Cancel this test's jobs that are still queued or running, and wait until they are gone."""
        live = [j for j in self.submitted if in_queue(j)]
        live += [j for d in self.watched for j in self.jobs_from(d) if j not in live]
        if live:
            slurm_command("scancel", *live, check=False)
            for job_id in live:
                wait_for(lambda j=job_id: not in_queue(j), 30, f"cancelled job {job_id} to leave",
                         interval=0.1)


@pytest.fixture(name="slurm")
def slurm_fixture() -> Iterator[Slurm]:
    """A :class:`Slurm` for this test, or a skip stating why there is no usable Slurm."""
    reason = slurm_unavailable_reason()
    if reason:
        pytest.skip(reason)
    session = Slurm()
    try:
        yield session
    finally:
        session.cleanup()


def write_script(directory: str, name: str, text: str, mode: int = 0o755) -> str:
    """Write ``text`` to ``directory/name`` with ``mode``; its path."""
    path = os.path.join(directory, name)
    with open(path, "w") as fh:
        fh.write(text)
    os.chmod(path, mode)
    return path


def read_lines(path: str) -> list[str]:
    with open(path) as fh:
        return fh.read().splitlines()

