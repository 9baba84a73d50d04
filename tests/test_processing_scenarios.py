"""Processing scenarios end to end (issue 4): real ``balsam launcher --job-mode mpi``
subprocesses on the real database -- errors and timeouts handled or not, graphs passing files,
workflows grown and rewired from inside jobs, kills and removals, and several transition
workers never processing a job twice. Exact state sequences, messages and files are asserted."""
from __future__ import annotations

import os
import re
import shutil
import signal
import sys
import time

import pytest
from conftest import make_public_tmpdir, run_balsam
from gates import gate_sh
from launcher_procs import launchers
from launcher_support import (
    QUICK,
    add_jobs,
    events,
    job_row,
    process_gone,
    settings,
    states,
    wait_for,
    workdir,
)
from test_processing_e2e import MPI, add_app, run_launcher, to_states, write

from balsam.core import lifecycle, schema

pytestmark = pytest.mark.slow

PY = sys.executable
RUN_DONE_TAIL = ["RUNNING", "RUN_DONE", "JOB_FINISHED"]
NO_STEPS = "nothing to stage or preprocess: ready to run"


@pytest.fixture
def scripts():
    """A 0755 directory for the apps and scripts of a test (and their marker files)."""
    path = make_public_tmpdir("balsam-ps-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def messages(cur, job_id: str) -> list[str]:
    return [e[3] for e in events(cur, job_id)]


def when(cur, job_id: str, state: str):
    """The time of the (last) event moving ``job_id`` to ``state``."""
    return [e[0] for e in events(cur, job_id) if e[2] == state][-1]


def parents_of(cur, job_id: str) -> list[str]:
    cur.execute(f"SELECT parent_id FROM {schema.DEP_TABLE} WHERE child_id = %s ORDER BY id",
                [job_id])
    return [str(r[0]) for r in cur.fetchall()]


def read(path: str) -> str:
    with open(path) as fh:
        return fh.read()


# A handler (the app's postprocess script) doing what the job's ON_ERROR / ON_TIMEOUT says.
HANDLER = f"""#!{PY}
import os
from balsam.launcher import dag
job = dag.current_job
print("error:", dag.ERROR, "timeout:", dag.TIMEOUT)
action = os.environ.get("ON_ERROR" if dag.ERROR else "ON_TIMEOUT" if dag.TIMEOUT else "", "")
if action == "retry":
    job.update_state("RESTART_READY", "handler: try again")
elif action == "finish":
    job.update_state("JOB_FINISHED", "handler: good enough")
elif action == "rescue":
    rescue = dag.spawn_child(name=job.name + "_rescue", application="quick", parents=[],
                             environ_vars="")
    for child in job.get_children():
        child.set_parents([rescue])
    job.update_state("FAILED", "handler: rescued by " + str(rescue.pk))
"""

# Fails (exit 3) the first time it runs in a working directory, succeeds the second time.
FAIL_ONCE = """#!/bin/sh
if [ -e failed_once ]; then echo second run; exit 0; fi
touch failed_once
echo broken; exit 3
"""
ALWAYS_FAIL = """#!/bin/sh
echo boom
exit 3
"""
# Sleeps (recording its pids) the first time it runs, succeeds the second time.
SLEEP_ONCE = """#!/bin/sh
if [ -e slept_once ]; then echo second run; exit 0; fi
touch slept_once
sleep 300 &
echo $$ $! > pids
wait
"""


def test_an_unhandled_run_error_fails_the_job_with_the_output_tail(db, cursor, scripts):
    add_app(cursor, "fail", write(scripts, "fail.sh", ALWAYS_FAIL))
    plain, flagged = add_jobs(cursor, [
        {"name": "plain", "application": "fail"},
        # A handler is asked for, but the app has no postprocess script to run it.
        {"name": "flagged", "application": "fail", "post_error_handler": True}])
    run_launcher(db)
    for job_id in (plain, flagged):
        evs = events(cursor, job_id)
        assert to_states(cursor, job_id) == ["PREPROCESSED", "RUNNING", "RUN_ERROR", "FAILED"]
        assert evs[2][3] == "exit code 3:\nboom"
        assert evs[3][3] == "run error not handled (no post_error_handler)"
        assert job_row(cursor, job_id)["session_id"] is None
        assert not os.path.exists(os.path.join(workdir(db, cursor, job_id), "postprocess.log"))


def test_an_error_handler_retries_or_finishes_the_job_and_one_setting_no_state_fails_it(
        db, cursor, scripts):
    handler = write(scripts, "handler.py", HANDLER)
    add_app(cursor, "flaky", write(scripts, "fail_once.sh", FAIL_ONCE), postprocess=handler)
    add_app(cursor, "broken", write(scripts, "fail.sh", ALWAYS_FAIL), postprocess=handler)
    retried, accepted, ignored = add_jobs(cursor, [
        {"name": "retried", "application": "flaky", "post_error_handler": True,
         "environ_vars": "ON_ERROR=retry"},
        {"name": "accepted", "application": "broken", "post_error_handler": True,
         "environ_vars": "ON_ERROR=finish"},
        {"name": "ignored", "application": "broken", "post_error_handler": True,
         "environ_vars": "ON_ERROR=nothing"}])
    run_launcher(db)
    assert to_states(cursor, retried) == ["PREPROCESSED", "RUNNING", "RUN_ERROR", "RESTART_READY",
                                          "RUNNING", "RUN_DONE", "POSTPROCESSED", "JOB_FINISHED"]
    assert messages(cursor, retried)[3] == "handler: try again"
    assert read(os.path.join(workdir(db, cursor, retried), "retried.out")) == "second run\n"
    log = read(os.path.join(workdir(db, cursor, retried), "postprocess.log"))
    # The handler run, then the normal postprocess after the successful second run.
    assert log.count(f"# Balsam Postprocessor: {handler}\n") == 2
    assert "# Invoked to handle RUN_ERROR\nerror: True timeout: False\n" in log
    assert log.rstrip().splitlines()[-2] == "error: False timeout: False"

    assert to_states(cursor, accepted) == ["PREPROCESSED", "RUNNING", "RUN_ERROR", "JOB_FINISHED"]
    assert messages(cursor, accepted)[3] == "handler: good enough"

    assert to_states(cursor, ignored) == ["PREPROCESSED", "RUNNING", "RUN_ERROR", "FAILED"]
    assert re.fullmatch(
        rf"the error handler \({re.escape(handler)}\) exited 0 after \d+\.\d s but left the job "
        r"RUN_ERROR: a handler must set the job's state", messages(cursor, ignored)[3])
    assert "error: True timeout: False\n" in read(
        os.path.join(workdir(db, cursor, ignored), "postprocess.log"))
    assert {job_row(cursor, j)["session_id"] for j in (retried, accepted, ignored)} == {None}


def stop_first_launcher_while_running(db, cursor, job_ids, *extra_second: str) -> None:
    """Run a launcher until every job's task has started, SIGTERM it, then run a second
    launcher to the end."""
    pid_files = [os.path.join(workdir(db, cursor, j), "pids") for j in job_ids]
    with settings(db, local_nodes=len(job_ids), launcher=QUICK), launchers() as start:
        first = start(*MPI)
        wait_for(lambda: all(os.path.exists(p) and read(p).strip() for p in pid_files), 30,
                 "every task to start")
        pids = [int(p) for f in pid_files for p in read(f).split()]
        first.signal(signal.SIGTERM)
        assert first.wait(120) == 0, first.output()
        assert all(process_gone(p) for p in pids)
        second = start(*MPI, *extra_second)
        assert second.wait(60) == 0, second.output()


STOPPED = "stopped by the launcher: the launcher received SIGTERM"


def test_timeouts_are_retried_handled_by_a_script_or_failed_when_retry_is_disabled(
        db, cursor, scripts):
    sleeper = write(scripts, "sleep_once.sh", SLEEP_ONCE)
    handler = write(scripts, "handler.py", HANDLER)
    add_app(cursor, "sleeper", sleeper)
    add_app(cursor, "handled", sleeper, postprocess=handler)
    retried, handled, failed = add_jobs(cursor, [
        {"name": "retried", "application": "sleeper"},
        {"name": "handled", "application": "handled", "post_timeout_handler": True,
         "environ_vars": "ON_TIMEOUT=finish"},
        {"name": "failed", "application": "sleeper", "auto_timeout_retry": False}])
    stop_first_launcher_while_running(db, cursor, [retried, handled, failed])

    assert to_states(cursor, retried) == ["PREPROCESSED", "RUNNING", "RUN_TIMEOUT",
                                          "RESTART_READY", *RUN_DONE_TAIL]
    assert messages(cursor, retried)[2:4] == [STOPPED, "automatic retry after a timeout"]
    assert read(os.path.join(workdir(db, cursor, retried), "retried.out")) == "second run\n"

    assert to_states(cursor, handled) == ["PREPROCESSED", "RUNNING", "RUN_TIMEOUT",
                                          "JOB_FINISHED"]
    assert messages(cursor, handled)[2:] == [STOPPED, "handler: good enough"]
    log = read(os.path.join(workdir(db, cursor, handled), "postprocess.log"))
    assert "# Invoked to handle RUN_TIMEOUT\nerror: False timeout: True\n" in log

    assert to_states(cursor, failed) == ["PREPROCESSED", "RUNNING", "RUN_TIMEOUT", "FAILED"]
    assert messages(cursor, failed)[2:] == [STOPPED, "timed out; automatic retry is disabled"]
    assert {job_row(cursor, j)["session_id"] for j in (retried, handled, failed)} == {None}


def test_a_timeout_handler_spawns_a_rescue_job_and_the_children_run_after_it(db, cursor,
                                                                             scripts):
    add_app(cursor, "handled", write(scripts, "sleep_once.sh", SLEEP_ONCE),
            postprocess=write(scripts, "handler.py", HANDLER))
    add_app(cursor, "quick", "/bin/echo quick")
    timed_out, *children = add_jobs(cursor, [
        {"name": "slow", "application": "handled", "post_timeout_handler": True,
         "environ_vars": "ON_TIMEOUT=rescue"},
        {"name": "child1", "application": "quick"}, {"name": "child2", "application": "quick"}])
    for child in children:
        lifecycle.add_dependency(cursor, timed_out, child)
    stop_first_launcher_while_running(db, cursor, [timed_out])

    cursor.execute(f"SELECT job_id FROM {schema.JOB_TABLE} WHERE name = 'slow_rescue'")
    ((rescue,),) = cursor.fetchall()
    rescue = str(rescue)
    assert to_states(cursor, timed_out) == ["PREPROCESSED", "RUNNING", "RUN_TIMEOUT", "FAILED"]
    assert messages(cursor, timed_out)[3] == f"handler: rescued by {rescue}"
    assert to_states(cursor, rescue) == ["PREPROCESSED", *RUN_DONE_TAIL]
    assert job_row(cursor, rescue)["data"] == {"spawned_by": timed_out}
    assert parents_of(cursor, rescue) == []
    for child in children:
        assert parents_of(cursor, child) == [rescue]
        assert to_states(cursor, child) == ["AWAITING_PARENTS", "PREPROCESSED", *RUN_DONE_TAIL]
        assert when(cursor, child, "RUNNING") > when(cursor, rescue, "JOB_FINISHED")
    assert states(cursor) == {"slow": "FAILED", "slow_rescue": "JOB_FINISHED",
                              "child1": "JOB_FINISHED", "child2": "JOB_FINISHED"}


SEED = "#!/bin/sh\necho 42 > seed.txt\n"
MIDDLE = """#!/bin/sh
read n < seed.txt
echo "$PART $n" > out.txt
echo "$PART" > "part_$PART.txt"
"""
GATHER = """#!/bin/sh
for f in *_out.txt; do cat "$f"; done > all.txt
ls part_* > parts.txt
"""


def test_a_one_three_one_graph_passes_files_through_input_files_with_prefixed_fan_in_names(
        db, cursor, scripts):
    add_app(cursor, "seed", write(scripts, "seed.sh", SEED))
    add_app(cursor, "middle", write(scripts, "middle.sh", MIDDLE))
    add_app(cursor, "gather", write(scripts, "gather.sh", GATHER))
    root, *middle, last = add_jobs(cursor, [
        {"name": "root", "application": "seed"},
        *({"name": f"mid_{p}", "application": "middle", "input_files": "seed.txt",
           "environ_vars": f"PART={p}"} for p in "abc"),
        {"name": "gather", "application": "gather", "input_files": "out.txt part_*"}])
    for mid in middle:
        lifecycle.add_dependency(cursor, root, mid)
        lifecycle.add_dependency(cursor, mid, last)
    run_launcher(db)

    root_dir = workdir(db, cursor, root)
    for mid in middle:
        assert to_states(cursor, mid) == ["AWAITING_PARENTS", "READY", "STAGED_IN",
                                          "PREPROCESSED", *RUN_DONE_TAIL]
        assert messages(cursor, mid)[1:4] == ["to be staged in",
                                              "linked 1 input file(s) from 1 parent(s)",
                                              "nothing to preprocess: ready to run"]
        assert os.readlink(os.path.join(workdir(db, cursor, mid), "seed.txt")) == \
            os.path.join(root_dir, "seed.txt")
        assert when(cursor, mid, "RUNNING") > when(cursor, root, "JOB_FINISHED")
    assert to_states(cursor, last) == ["AWAITING_PARENTS", "READY", "STAGED_IN", "PREPROCESSED",
                                       *RUN_DONE_TAIL]
    assert messages(cursor, last)[2] == "linked 6 input file(s) from 3 parent(s)"
    wd = workdir(db, cursor, last)
    first, second, third = middle
    # out.txt comes from three parents: each link is "<parent id8>_out.txt".
    links = {name: os.readlink(os.path.join(wd, name)) for name in os.listdir(wd)
             if os.path.islink(os.path.join(wd, name))}
    assert links == {
        f"{first[:8]}_out.txt": os.path.join(workdir(db, cursor, first), "out.txt"),
        f"{second[:8]}_out.txt": os.path.join(workdir(db, cursor, second), "out.txt"),
        f"{third[:8]}_out.txt": os.path.join(workdir(db, cursor, third), "out.txt"),
        **{f"part_{p}.txt": os.path.join(workdir(db, cursor, m), f"part_{p}.txt")
           for p, m in zip("abc", middle)}}
    got = read(os.path.join(wd, "all.txt")).splitlines()
    assert sorted(got) == ["a 42", "b 42", "c 42"]
    assert read(os.path.join(wd, "parts.txt")) == "part_a.txt\npart_b.txt\npart_c.txt\n"


# The mapper's postprocess: spawn as many pieces as the run printed, make "reduce" wait on them.
SPAWN = f"""#!{PY}
from balsam.launcher import dag
job = dag.current_job
count = int(open(job.name + ".out").read())
reduce = dag.BalsamJob.objects.get(name="reduce", workflow=job.workflow)
for i in range(count):
    piece = dag.spawn_child(name=f"piece{{i}}", application="piece", args=str(i))
    dag.add_dependency(piece, reduce)
print("spawned", count)
"""
PIECE = '#!/bin/sh\necho "piece $1" > "piece_$1.txt"\n'
REDUCE = "#!/bin/sh\ncat piece_*.txt > total.txt\n"


def test_a_postprocess_spawns_a_variable_number_of_children_and_rewires_the_reduce_job(
        db, cursor, scripts):
    add_app(cursor, "mapper", "/bin/echo", postprocess=write(scripts, "spawn.py", SPAWN))
    add_app(cursor, "piece", write(scripts, "piece.sh", PIECE))
    add_app(cursor, "reduce", write(scripts, "reduce.sh", REDUCE))
    mapper, reduce = add_jobs(cursor, [
        {"name": "mapper", "application": "mapper", "args": "3"},
        {"name": "reduce", "application": "reduce", "input_files": "piece_*.txt"}])
    lifecycle.add_dependency(cursor, mapper, reduce)
    run_launcher(db)

    assert to_states(cursor, mapper) == ["PREPROCESSED", "RUNNING", "RUN_DONE", "POSTPROCESSED",
                                         "JOB_FINISHED"]
    cursor.execute(f"SELECT name, job_id FROM {schema.JOB_TABLE} WHERE name LIKE 'piece%%'")
    pieces = {name: str(job_id) for name, job_id in cursor.fetchall()}
    assert sorted(pieces) == ["piece0", "piece1", "piece2"]
    assert parents_of(cursor, reduce) == [mapper] + [pieces[f"piece{i}"] for i in range(3)]
    for piece in pieces.values():
        # Created while the mapper was RUN_DONE: the parent check may see it before or after
        # the mapper finished.
        assert to_states(cursor, piece) in (["AWAITING_PARENTS", "PREPROCESSED", *RUN_DONE_TAIL],
                                            ["PREPROCESSED", *RUN_DONE_TAIL])
        assert parents_of(cursor, piece) == [mapper]
        assert job_row(cursor, piece)["data"] == {"spawned_by": mapper}
        assert when(cursor, piece, "RUNNING") > when(cursor, mapper, "JOB_FINISHED")
        assert when(cursor, reduce, "RUNNING") > when(cursor, piece, "JOB_FINISHED")
    assert to_states(cursor, reduce) == ["AWAITING_PARENTS", "READY", "STAGED_IN", "PREPROCESSED",
                                         *RUN_DONE_TAIL]
    assert messages(cursor, reduce)[2] == "linked 3 input file(s) from 4 parent(s)"
    assert read(os.path.join(workdir(db, cursor, reduce), "total.txt")) == \
        "piece 0\npiece 1\npiece 2\n"


GATE = f"""#!/bin/sh
{gate_sh('"$GATE"')}
"""


LONG = """#!/bin/sh
sleep 300 &
echo $$ $! > pids
wait
"""


def test_killing_a_subtree_whose_root_runs_or_waits_kills_every_descendant_and_nothing_else(
        db, cursor, scripts):
    gate = os.path.join(scripts, "open")
    add_app(cursor, "long", write(scripts, "long.sh", LONG))
    add_app(cursor, "gated", write(scripts, "gate.sh", GATE))
    add_app(cursor, "quick", "/bin/echo quick")
    names = ["root", "a", "b", "grandchild", "alone", "other", "other_child", "gated", "waiter",
             "waiter_child"]
    apps = {"root": "long", "gated": "gated"}
    (root, a, b, grandchild, alone, other, other_child, gated, waiter,
     waiter_child) = add_jobs(cursor, [{"name": n, "application": apps.get(n, "quick"),
                                        "environ_vars": f"GATE={gate}"} for n in names])
    for parent, child in ((root, a), (root, b), (a, grandchild), (other, other_child),
                          (gated, waiter), (waiter, waiter_child)):
        lifecycle.add_dependency(cursor, parent, child)
    pid_file = os.path.join(workdir(db, cursor, root), "pids")
    with settings(db, local_nodes=2, launcher=QUICK), launchers() as start:
        launcher = start(*MPI)
        wait_for(lambda: os.path.exists(pid_file) and read(pid_file).strip(), 30,
                 "the root to run")
        wait_for(lambda: states(cursor)["gated"] == "RUNNING", 30, "the gated job to run")
        pids = [int(p) for p in read(pid_file).split()]
        done = run_balsam("killjob", "--id", root[:8], "--recursive", "--yes")
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"Killed 4 jobs: {root[:8]}, ")
        assert sorted(done.stdout.strip().split(": ")[1].split(", ")) == \
            sorted(j[:8] for j in (root, a, b, grandchild))
        assert states(cursor)["waiter"] == "AWAITING_PARENTS"
        done = run_balsam("killjob", "--id", waiter[:8], "--recursive", "--yes")
        assert done.returncode == 0, done.stderr
        assert done.stdout == f"Killed 2 jobs: {waiter[:8]}, {waiter_child[:8]}\n"
        wait_for(lambda: all(process_gone(p) for p in pids), 10, "the root's processes to stop")
        with open(gate, "w"):
            pass
        assert launcher.wait(60) == 0, launcher.output()
    assert to_states(cursor, root) == ["PREPROCESSED", "RUNNING", "USER_KILLED"]
    assert messages(cursor, root)[2] == "Killed by user"
    for job_id in (a, b, grandchild, waiter, waiter_child):
        assert to_states(cursor, job_id) == ["AWAITING_PARENTS", "USER_KILLED"]
        assert messages(cursor, job_id)[1] == "Killed by user"
    for job_id in (alone, other, gated):
        assert to_states(cursor, job_id) == ["PREPROCESSED", *RUN_DONE_TAIL]
    assert to_states(cursor, other_child) == ["AWAITING_PARENTS", "PREPROCESSED", *RUN_DONE_TAIL]
    killed = {"root", "a", "b", "grandchild", "waiter", "waiter_child"}
    assert states(cursor) == {n: "USER_KILLED" if n in killed else "JOB_FINISHED" for n in names}
    assert job_row(cursor, root)["session_id"] is None


SLOW_PREPROCESS = """#!/bin/sh
sleep 300 &
echo $$ $! > pids
wait
"""


def test_a_job_killed_during_its_preprocess_stops_the_script_and_stays_killed(db, cursor,
                                                                              scripts):
    ran = os.path.join(scripts, "ran")
    add_app(cursor, "never", f"/bin/touch {ran}",
            preprocess=write(scripts, "slow_pre.sh", SLOW_PREPROCESS))
    (job_id,) = add_jobs(cursor, [{"name": "victim", "application": "never"}])
    wd = workdir(db, cursor, job_id)
    pid_file = os.path.join(wd, "pids")
    with settings(db, launcher=QUICK), launchers() as start:
        launcher = start(*MPI)
        wait_for(lambda: os.path.exists(pid_file) and read(pid_file).strip(), 30,
                 "the preprocess script to start")
        pids = [int(p) for p in read(pid_file).split()]
        done = run_balsam("killjob", "--id", job_id[:8], "--yes")
        assert done.returncode == 0, done.stderr
        killed_at = time.monotonic()
        wait_for(lambda: all(process_gone(p) for p in pids), 60, "the script to be stopped")
        print(f"preprocess script stopped {time.monotonic() - killed_at:.1f} s after the kill")
        assert launcher.wait(120) == 0, launcher.output()
    assert to_states(cursor, job_id) == ["STAGED_IN", "USER_KILLED"]
    assert messages(cursor, job_id) == ["nothing to stage in: to be preprocessed", "Killed by user"]
    assert job_row(cursor, job_id)["session_id"] is None
    assert not os.path.exists(ran)
    assert not os.path.exists(os.path.join(wd, "victim.out"))
    assert re.search(r"\n# preprocess aborted after \d+\.\d s\n$",
                     read(os.path.join(wd, "preprocess.log")))


def test_removing_a_parent_while_its_children_wait_fails_them_naming_the_parent(db, cursor,
                                                                                 scripts):
    gate = os.path.join(scripts, "open")
    add_app(cursor, "gated", write(scripts, "gate.sh", GATE))
    add_app(cursor, "quick", "/bin/echo quick")
    first, removed, child1, child2, other = add_jobs(cursor, [
        {"name": "first", "application": "gated", "environ_vars": f"GATE={gate}"},
        {"name": "removed", "application": "quick"}, {"name": "child1", "application": "quick"},
        {"name": "child2", "application": "quick"}, {"name": "other", "application": "quick"}])
    for parent, child in ((first, removed), (removed, child1), (removed, child2), (first, other)):
        lifecycle.add_dependency(cursor, parent, child)
    with settings(db, launcher=QUICK), launchers() as start:
        launcher = start(*MPI)
        wait_for(lambda: states(cursor)["first"] == "RUNNING", 30, "the first job to run")
        assert states(cursor)["child1"] == "AWAITING_PARENTS"
        done = run_balsam("rm", "jobs", "--id", removed[:8], "--force")
        assert done.returncode == 0, done.stderr
        assert done.stdout == (f"Removed 1 jobs: {schema.cute_id('removed', removed)}\n"
                               "2 jobs waiting on a removed job were marked FAILED\n")
        with open(gate, "w"):
            pass
        assert launcher.wait(60) == 0, launcher.output()
    for child in (child1, child2):
        assert to_states(cursor, child) == ["AWAITING_PARENTS", "FAILED"]
        assert messages(cursor, child)[1] == f"parent job removed: removed {removed[:8]}"
    assert to_states(cursor, other) == ["AWAITING_PARENTS", "PREPROCESSED", *RUN_DONE_TAIL]
    assert states(cursor) == {"first": "JOB_FINISHED", "child1": "FAILED", "child2": "FAILED",
                              "other": "JOB_FINISHED"}


APPEND_PRE = """#!/bin/sh
echo "$BALSAM_JOB_ID" >> "$MARKERS/$BALSAM_JOB_ID"
"""


def test_transition_workers_of_two_launchers_never_process_a_job_twice(db, cursor, scripts):
    markers = os.path.join(scripts, "markers")
    os.mkdir(markers)
    add_app(cursor, "marked", "/bin/true", preprocess=write(scripts, "append.sh", APPEND_PRE))
    ids = add_jobs(cursor, [{"name": f"m{i}", "application": "marked",
                             "environ_vars": f"MARKERS={markers}"} for i in range(200)])
    with settings(db, local_nodes=4, launcher=QUICK), launchers() as start:
        running = [start(*MPI, "--num-transition-threads", "3") for _ in range(2)]
        assert [launcher.wait(120) for launcher in running] == [0, 0], \
            [launcher.output() for launcher in running]
        logs = [launcher.output()[0].split(", log ")[1].strip() for launcher in running]
    assert set(states(cursor).values()) == {"JOB_FINISHED"}
    for job_id in ids:
        assert read(os.path.join(markers, job_id)).splitlines() == [job_id]
        assert to_states(cursor, job_id) == ["STAGED_IN", "PREPROCESSED", *RUN_DONE_TAIL]
    # Which worker preprocessed which job, from the launchers' logs: each job exactly once,
    # and the work was shared.
    done: dict[str, list[str]] = {}
    for number, path in enumerate(logs):
        for found in re.finditer(r"(balsam-transitions-\d): job (\w{8}) STAGED_IN -> PREPROCESSED",
                                 read(path)):
            done.setdefault(found.group(2), []).append(f"{number}:{found.group(1)}")
    assert sorted(done) == sorted(j[:8] for j in ids)
    assert all(len(workers) == 1 for workers in done.values())
    assert len({w for workers in done.values() for w in workers}) >= 2
