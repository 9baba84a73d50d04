"""Chained starts when the kernel cannot help: a task whose pidfd could not be opened
(``pidfd_open`` failing with EMFILE, or ENOSYS in a container: forced here by the kernel's test
hook ``Spawner.fail_pidfds``) is never followed by a start beside it (the follow-on, and every
start chained behind it, comes back *returned* and starts once that task is reaped, in the
queue's order even when the loop collects one start at a time), and a FIFO
at a task's output path fails that task with a message naming it instead of blocking a spawning
thread and the worker's ``close`` (on every start path: native, Python threads, the loop itself,
the Popen fallback; and through a real serial launcher, where the job fails with the reason).

No timing: each task notes its own start and end (wall clock, ``date +%s.%N``) and takes a
directory as a lock (``mkdir``, atomic) while it runs, so two tasks of one slot running at once
leave a mark whatever the machine's load; tasks that must still run when the test acts wait for
a gate file (bounded: tests/gates.py), and each test waits for conditions."""
from __future__ import annotations

import os
import select
import shlex
import threading
from collections.abc import Callable

import pytest
from gates import gate_sh
from launcher_procs import launchers
from launcher_support import QUICK, add_app, add_jobs, events, settings, states, wait_for, workdir
from test_launcher_serial import SERIAL
from test_spawn_chain import native, serve, shell, stop_and_exit, worker_for
from test_spawn_chain_races import Kernel

from balsam.launcher import libc_spawn, spawn, spawn_native, spawn_threads
from balsam.launcher.serial_worker import Work, Worker

pytestmark = pytest.mark.skipif(not spawn_threads.usable(), reason="no glibc posix_spawn here")


def timed(tmp: str, name: str, gate: str = "") -> Work:
    """Takes the slot's lock (``busy``: a second holder appends to ``overlap``), notes its start
    in ``<name>.start``, waits for ``gate`` if any, notes its end and a run (``<name>.ran``:
    a second run makes two lines), gives the lock back, exits."""
    q = {k: shlex.quote(os.path.join(tmp, k)) for k in ("busy", "overlap")}
    start, end, ran = (shlex.quote(os.path.join(tmp, f"{name}.{k}")) for k in ("start", "end",
                                                                              "ran"))
    wait = f"{gate_sh(shlex.quote(gate), 0.02)}; " if gate else ""
    return shell(tmp, name, f"mkdir {q['busy']} 2>/dev/null || echo {name} >> {q['overlap']}; "
                            f"date +%s.%N > {start}; {wait}echo ran >> {ran}; "
                            f"date +%s.%N > {end}; rmdir {q['busy']}")


def read(tmp: str, name: str) -> str:
    with open(os.path.join(tmp, name)) as fh:
        return fh.read()


def one_after_another(tmp: str, names: list[str]) -> None:
    """Each task ran exactly once, and never while another one ran (one slot)."""
    assert not os.path.exists(os.path.join(tmp, "overlap")), read(tmp, "overlap")
    for name in names:
        assert read(tmp, f"{name}.ran") == "ran\n", name
    spans = sorted((float(read(tmp, f"{n}.start")), float(read(tmp, f"{n}.end")), n)
                   for n in names)
    for (_, end, before), (start, _, after) in zip(spans, spans[1:]):
        assert start >= end, f"{after} started at {start}, before {before} ended at {end}"


def without_pidfds(worker: Worker, every: int) -> None:
    spawns = worker._spawns
    assert isinstance(spawns, spawn_native.NativeSpawns) and spawns.chains
    spawns._spawner.fail_pidfds(every)


@native
def test_starts_chained_behind_a_task_without_a_pidfd_wait_until_it_was_reaped(tmp_path):
    tmp = str(tmp_path)
    gate = os.path.join(tmp, "gate")
    inbox, worker = worker_for([0])
    without_pidfds(worker, 1)  # every child's pidfd_open "fails"
    names = ["g0", "f1", "f2", "f3"]
    inbox.orders.append({"work": [timed(tmp, "g0", gate)] + [timed(tmp, n) for n in names[1:]]})
    try:
        # f1 is chained behind g0's start in flight, f2 and f3 behind theirs; g0 then runs with
        # no pidfd: all three come back unstarted, in order, to wait in the queue
        serve(worker, lambda: "g0" in worker.running and len(worker.queue) == 3, "the hand-back")
        assert worker.chained >= 1 and worker._spawns.chained_ids() == []  # type: ignore
        assert [w.job_id for w in worker.queue] == names[1:]
        assert worker._leader == {} and worker._follower == {} and worker._chained_work == {}
        assert worker.running["g0"].fd == -1 and worker.node.full and len(worker.node) == 1
        assert inbox.collected("started") == ["g0"]
        assert not any(os.path.exists(os.path.join(tmp, f"{n}.start")) for n in names[1:])
        open(gate, "w").close()
        serve(worker, lambda: len(inbox.collected("done")) == 4, "all four done")
    finally:
        worker.close()
        open(gate, "w").close()
    one_after_another(tmp, names)
    # f2 and f3 are chained and handed back again behind f1 (no pidfd either), over one or
    # more collects: they still start in the queue's order
    assert inbox.collected("done") == names and inbox.collected("started") == names
    assert not inbox.collected("failed") and not inbox.collected("returned")
    assert worker.node.occupancy == 0 and worker._unwatched == set()


class OneAtATime:
    """The kernel's spawner, its starts collected one per :meth:`collect` (a loop that wakes
    between two records of one chain's hand-back, at will; the others stay in the kernel)."""

    def __init__(self, spawner) -> None:  # type: ignore[no-untyped-def]
        self._spawner = spawner

    def collect(self) -> list:
        return self._spawner.collect(1)

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self._spawner, name)


@native
def test_starts_handed_back_over_several_collects_start_in_the_queues_order(tmp_path):
    tmp = str(tmp_path)
    inbox, worker = worker_for([0])
    without_pidfds(worker, 1)
    spawns = worker._spawns
    spawns._spawner = OneAtATime(spawns._spawner)  # type: ignore[union-attr]
    names = [f"f{i}" for i in range(6)]
    inbox.orders.append({"work": [timed(tmp, n) for n in names]})
    try:
        # each start comes back alone: a hand-back (f2) is back in the queue while the start
        # chained behind it (f3) is still on its way back, handed back too; f2 must not then
        # be chained behind f3 (a CI run saw f3 start first)
        serve(worker, lambda: len(inbox.collected("done")) == len(names), "all done")
        stop_and_exit(inbox, worker)
    finally:
        worker.close()
    one_after_another(tmp, names)
    assert inbox.collected("started") == names and inbox.collected("done") == names
    assert not inbox.collected("failed") and not inbox.collected("returned")
    assert worker.chained > 0 and worker.node.occupancy == 0


@native
@pytest.mark.parametrize("order", ["kill", "stop"])
def test_a_kill_or_stop_of_a_start_being_handed_back_reports_it_once_unstarted(tmp_path, order):
    tmp = str(tmp_path)
    gate = os.path.join(tmp, "gate")
    inbox, worker = worker_for([0])
    without_pidfds(worker, 1)
    inbox.orders.append({"work": [timed(tmp, "g0", gate), timed(tmp, "f1")]})
    try:
        worker.step()  # g0 asked for, f1 chained behind it; both still in the kernel's hands
        assert worker._leader == {"f1": "g0"}
        # withdrawn before the kernel reached it, or marked and handed back with the mark:
        # either way reported once, never started, never queued again
        inbox.orders.append({"kill": ["f1"]} if order == "kill" else {"stop": 0.5})
        key = "killed" if order == "kill" else "returned"
        serve(worker, lambda: "f1" in inbox.collected(key)
              and not worker._spawns.in_flight, f"f1 {key}")  # type: ignore[union-attr]
        # (a stop also withdraws g0 if its posix_spawn had not begun: returned, never made)
        g0_back = inbox.collected(key) == ["f1", "g0"] or inbox.collected(key) == ["g0", "f1"]
        assert (inbox.collected(key) == ["f1"] or order == "stop" and g0_back)
        assert not worker.queue
        if order == "kill":
            open(gate, "w").close()
            serve(worker, lambda: inbox.collected("done"), "g0 done")
        stop_and_exit(inbox, worker)
    finally:
        worker.close()
        open(gate, "w").close()
    assert inbox.collected("started") == ([] if g0_back else ["g0"])
    assert sorted(inbox.collected(key)) == (["f1", "g0"] if g0_back else ["f1"])
    assert not os.path.exists(os.path.join(tmp, "f1.start"))
    assert worker._leader == {} and worker._follower == {} and worker.node.occupancy == 0


@native
@pytest.mark.parametrize("every", [2, 3])
def test_every_task_runs_once_and_alone_when_some_pidfds_fail(tmp_path, every):
    tmp = str(tmp_path)
    names = [f"t{i:02}" for i in range(24)]
    inbox, worker = worker_for([0])
    without_pidfds(worker, every)  # chains behind watched tasks and hand-backs, mixed
    inbox.orders.append({"work": [timed(tmp, n) for n in names]})
    try:
        serve(worker, lambda: len(inbox.collected("done")) == len(names), "all done")
        stop_and_exit(inbox, worker)
    finally:
        worker.close()
    one_after_another(tmp, names)
    assert sorted(inbox.collected("done")) == sorted(names)
    assert sorted(inbox.collected("started")) == names  # each reported started once
    assert not inbox.collected("failed") and not inbox.collected("returned")
    assert worker.chained > 0 and worker.node.occupancy == 0


@native
def test_the_kernel_hands_back_a_start_waiting_for_one_that_gets_no_pidfd(tmp_path):
    tmp = str(tmp_path)
    gates = [os.path.join(tmp, g) for g in ("gate0", "gate1")]
    kernel = Kernel()
    kernel.spawns._spawner.fail_pidfds(2)  # h (the first child) has one, g (the second) none
    try:
        kernel.submit(timed(tmp, "h", gates[0]))
        h = kernel.wait("h")
        assert h.fd >= 0 and not h.returned
        kernel.submit(timed(tmp, "g", gates[1]), after=os.dup(h.fd))
        kernel.submit(timed(tmp, "f1"), after_job="g")  # waits for g's start, then its pidfd
        kernel.submit(timed(tmp, "f2"), after_job="f1")
        open(gates[0], "w").close()  # h ends: g starts (no pidfd), f1 and f2 come back
        g, f1, f2 = (kernel.wait(n) for n in ("g", "f1", "f2"))
        assert g.task is not None and g.fd == -1 and not g.returned
        assert f1.returned and f2.returned and f1.task is None and f1.error is None
        assert kernel.order == ["h", "g", "f1", "f2"]
        assert kernel.spawns.chained_ids() == [] and kernel.spawns.in_flight == 0
        assert not any(os.path.exists(os.path.join(tmp, f"{n}.start")) for n in ("f1", "f2"))
    finally:
        for gate in gates:
            open(gate, "w").close()
        kernel.ended()
    one_after_another(tmp, ["h", "g"])


@native
def test_a_start_asked_for_after_one_that_got_no_pidfd_is_handed_back(tmp_path):
    tmp = str(tmp_path)
    gate = os.path.join(tmp, "gate")
    kernel = Kernel()
    kernel.spawns._spawner.fail_pidfds(1)
    try:
        kernel.submit(timed(tmp, "g", gate))
        # its record noted (no pidfd: the event fd says so), not yet collected: the next start
        # asked for after it finds no pidfd to wait on
        wait_for(lambda: select_readable(kernel.spawns._spawner.eventfd), 60, "g's record")
        kernel.submit(timed(tmp, "f1"), after_job="g")
        f1 = kernel.wait("f1")
        g = kernel.taken["g"]
        assert f1.returned and g.fd == -1 and kernel.order == ["g", "f1"]
        assert not os.path.exists(os.path.join(tmp, "f1.start"))
    finally:
        open(gate, "w").close()
        kernel.ended()


def select_readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


# ---- a FIFO at a task's output path ------------------------------------------------------------
@pytest.fixture(params=["native", "python", "loop"])
def start_path(request, monkeypatch) -> str:
    """Tasks started by the kernel's native threads, the Python threads, or the loop itself."""
    if request.param == "native" and spawn_native.KERNEL != "cython":
        pytest.skip(f"the kernel is not built here ({spawn_native.KERNEL_ERROR})")
    monkeypatch.setattr(spawn_native, "KERNEL", "cython" if request.param == "native" else "python")
    if request.param == "loop":
        monkeypatch.setattr(spawn_threads, "usable", lambda: False)
    return str(request.param)


def fifo_job(tmp: str, name: str, fifos: list[str]) -> Work:
    work = shell(tmp, name, "echo never")
    os.mkfifo(work.output_path)
    fifos.append(work.output_path)
    return work


def bounded(what: str, call: Callable[[], None], seconds: float = 120) -> None:
    """``call`` in a thread: a start blocked in open() (the loop's own, on the "loop" path)
    fails the test instead of hanging it (the ``fifos`` fixture then lets the writer go)."""
    failed: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:  # re-raised below, in the test's thread
            failed.append(exc)

    caller = threading.Thread(target=run, daemon=True)
    caller.start()
    caller.join(seconds)
    assert not caller.is_alive(), f"{what}: blocked"
    if failed:
        raise failed[0]


def test_a_fifo_as_output_fails_its_task_and_blocks_nothing(tmp_path, start_path, fifos):
    tmp = str(tmp_path)
    gate = os.path.join(tmp, "gate")
    inbox, worker = worker_for([0])
    if start_path == "loop":
        assert worker._spawns is None
    # one slot: on the native path the FIFO's job is chained behind g0 and m2 behind it
    inbox.orders.append({"work": [timed(tmp, "g0", gate), fifo_job(tmp, "p1", fifos),
                                  timed(tmp, "m2")]})

    def scenario() -> None:
        serve(worker, lambda: "g0" in worker.running, "g0 runs")
        open(gate, "w").close()
        serve(worker, lambda: len(inbox.collected("done")) == 2 and inbox.collected("failed"),
              "the ends")
        stop_and_exit(inbox, worker)

    try:
        bounded("the worker", scenario)
    finally:
        open(gate, "w").close()
        bounded("the worker's close", worker.close, 60)
    [(job, rc, message)] = inbox.collected("failed")
    assert job == "p1" and rc == -1
    assert message.startswith("cannot start:") and "FIFO with no reader" in message, message
    assert fifos[0] in message
    assert inbox.collected("done") == ["g0", "m2"]
    one_after_another(tmp, ["g0", "m2"])
    assert worker.node.occupancy == 0


def test_a_fifo_as_output_with_a_reader_gets_the_output(tmp_path, start_path, fifos):
    tmp = str(tmp_path)
    inbox, worker = worker_for([0])
    work = fifo_job(tmp, "p0", fifos)
    reader = os.open(work.output_path, os.O_RDONLY | os.O_NONBLOCK)

    def scenario() -> None:
        inbox.orders.append({"work": [work._replace(argv=["sh", "-c", "echo through"])]})
        serve(worker, lambda: inbox.collected("done"), "p0 done")
        stop_and_exit(inbox, worker)

    try:
        bounded("the worker", scenario)
        os.set_blocking(reader, True)  # what the task wrote
        assert os.read(reader, 100) == b"through\n"
    finally:
        os.close(reader)
        bounded("the worker's close", worker.close, 60)
    assert inbox.collected("done") == ["p0"] and not inbox.collected("failed")


@pytest.mark.parametrize("method", ["glibc", "popen", "prepare"])
def test_a_fifo_as_output_is_refused_by_each_python_start(tmp_path, fifos, method):
    tmp = str(tmp_path)
    work = fifo_job(tmp, "p0", fifos)
    os.makedirs(work.workdir)
    true = spawn.resolve("true", os.environ["PATH"])
    if method == "glibc" and libc_spawn._libc() is None:
        pytest.skip("no glibc posix_spawn_file_actions_addchdir_np here")
    calls = {
        "glibc": lambda: libc_spawn.spawn(true, ["true"], dict(os.environ), work.workdir,
                                          work.output_path, ()),
        "popen": lambda: libc_spawn.spawn_popen(true, ["true"], dict(os.environ),
                                                work.workdir, work.output_path, ()),
        "prepare": lambda: spawn.prepare(work.workdir, work.output_path)}
    with pytest.raises(OSError) as caught:
        bounded(method, calls[method], 60)
    exc = caught.value
    assert exc.filename == work.output_path
    if method != "prepare":
        assert "FIFO with no reader" in str(exc)


@pytest.mark.slow
def test_a_launchers_job_with_a_fifo_as_output_fails_with_the_reason_and_the_rest_run(
        db, cursor, scripts, fifos):
    add_app(cursor, "hello", "/bin/echo hello")
    ids = add_jobs(cursor, [{"name": f"h{i}", "application": "hello", "node_packing_count": 2,
                             "num_nodes": 1} for i in range(12)])
    fifo_id = ids[5]
    directory = workdir(db, cursor, fifo_id)
    os.makedirs(directory, exist_ok=True)
    os.mkfifo(os.path.join(directory, "h5.out"))
    fifos.append(os.path.join(directory, "h5.out"))
    with settings(db, launcher=QUICK), launchers() as start:
        launcher = start(*SERIAL)
        assert launcher.wait(120) == 0, launcher.output()  # the worker and ensemble exit
    final = states(cursor)  # by name
    assert final.pop("h5") == "FAILED" and set(final.values()) == {"JOB_FINISHED"}, final
    messages = [e[3] for e in events(cursor, fifo_id) if e[2] == "RUN_ERROR"]
    assert messages and all("the output file is a FIFO with no reader" in m for m in messages)
    for i, job_id in enumerate(ids):
        if job_id != fifo_id:
            with open(os.path.join(workdir(db, cursor, job_id), f"h{i}.out")) as fh:
                assert fh.read() == "hello\n"
