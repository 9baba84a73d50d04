"""Python-function tasks (site apps with run()) with real launchers on the real database:
return values and exceptions (with the remote traceback) through Job.result(), non-JSON
arguments round-tripping through cloudpickle, result() before a job is done, wait() and
as_completed(), serial mode's warm workers (one process serves many tasks) and MPI mode's
`python -m` runner, a mix of command and function jobs in one launcher, and bad input refused
when the job is created."""
from __future__ import annotations

import os
import shutil

import pytest
from launcher_procs import launchers
from launcher_support import QUICK, process_gone, settings, wait_for
from test_api import make_site

from balsam.api import FIRST_COMPLETED, Job, as_completed, sites, wait
from balsam.api.names import TranslationError
from balsam.api.waiting import JobFailed, JobNotDone, JobTimeout
from balsam.core import schema
from balsam.site import AppDefinitionError, ParameterError
from balsam.site.pyfunc import RemoteTraceback, SerializationError

APPS = '''import os
from balsam.site import ApplicationDefinition


class Add(ApplicationDefinition):
    def run(self, a, b=10):
        print("adding", a, b)
        return a + b


class Boom(ApplicationDefinition):
    def run(self, message):
        def inner():
            raise ValueError(message)
        inner()


class Apply(ApplicationDefinition):
    """Calls what it is given: arguments that JSON cannot hold."""

    def run(self, fn, point, **extra):
        return {"value": fn(point.x, point.y), "point": point, "extra": extra,
                "cwd": os.getcwd(), "job": self.job.id, "pid": os.getpid()}


class Sleep(ApplicationDefinition):
    def run(self, seconds):
        import time
        with open("pid", "w") as fh:
            fh.write(str(os.getpid()))
        time.sleep(seconds)


class Sourced(ApplicationDefinition):
    """A preamble must be sourced: serial mode starts it as a command, not in a warm worker."""

    def shell_preamble(self):
        return "export FROM_PREAMBLE=sourced"

    def run(self):
        return os.environ["FROM_PREAMBLE"], os.getpid()


class Echo(ApplicationDefinition):
    command_template = "echo command {{ word }}"


class Varargs(ApplicationDefinition):
    def run(self, first, /, second, *rest, scale=1, **named):
        return {"first": first, "second": second, "rest": list(rest), "scale": scale,
                "named": named}


class EveryHundredth(ApplicationDefinition):
    def run(self, i):
        if i % 100 == 0:
            raise KeyError(f"task {i}")
        return {"i": i}
'''


@pytest.fixture
def site(db):
    yield make_site(db, fn=APPS)
    shutil.rmtree(os.path.join(db, "apps"), ignore_errors=True)
    sites.forget_apps()


def run_launcher(db: str, mode: str, timeout: float = 90) -> None:
    with settings(db, launcher=QUICK), launchers() as start:
        launcher = start("--consume-all", "--job-mode", mode)
        assert launcher.wait(timeout) == 0, launcher.output()


def add(site: str, n: int, **params) -> Job:
    return Job(site_path=site, app_name="fn.Add", workdir=f"add/{n}",
               parameters={"a": n, **params}, node_packing_count=4)


def test_the_runner_command_is_the_one_serial_workers_recognise():
    from balsam.launcher import pyfunc_task, warm_pool
    from balsam.site import pyfunc

    assert pyfunc.RUNNER_MODULE == warm_pool.RUNNER_MODULE == pyfunc_task.__name__ or \
        pyfunc_task.__spec__.name == pyfunc.RUNNER_MODULE
    assert warm_pool.is_runner_argv(pyfunc.runner_command().replace("'", "").split())


def test_a_function_job_stores_its_arguments_and_the_runner_command(site, cursor):
    job = Job.objects.create(site_path=site, app_name="fn.Add", workdir="one",
                             parameters={"a": 1})
    cursor.execute(f"SELECT args, parameters FROM {schema.JOB_TABLE}")
    args, params = cursor.fetchone()
    assert args.endswith(" -m balsam.launcher.pyfunc_task") and params == {"a": 1, "b": 10}
    cursor.execute("SELECT length(args) > 0, result FROM core_jobpayload WHERE job_id = %s",
                   [str(job.id)])
    assert cursor.fetchone() == (True, None)
    with pytest.raises(JobNotDone, match=r"is (PREPROCESSED|CREATED), not done: no result yet"):
        job.result()
    with pytest.raises(JobTimeout, match="not done after 0.1 s"):
        job.result(timeout=0.1)
    assert not job.done()
    job.delete()
    cursor.execute("SELECT count(*) FROM core_jobpayload")
    assert cursor.fetchone() == (0,)


@pytest.mark.parametrize("parameters, message", [
    ({}, r"parameters do not fit Add.run\(\): missing a required argument: 'a'"),
    ({"a": 1, "c": 2}, r"got an unexpected keyword argument 'c'"),
])
def test_parameters_not_matching_run_are_refused_when_the_job_is_created(site, cursor,
                                                                        parameters, message):
    with pytest.raises(ParameterError, match=message):
        Job(site_path=site, app_name="fn.Add", workdir="x", parameters=parameters)
    cursor.execute(f"SELECT count(*) FROM {schema.JOB_TABLE}")
    assert cursor.fetchone() == (0,)


@pytest.mark.parametrize("args, parameters, positional, keywords", [
    ((1,), {}, [], {"a": 1, "b": 10}),  # a value for a named parameter is stored by name
    ((1, 2), {}, [], {"a": 1, "b": 2}),
    ((), {"a": 1}, [], {"a": 1, "b": 10}),
])
def test_positional_values_for_named_parameters_are_stored_by_name(args, parameters, positional,
                                                                   keywords):
    from balsam.site import ApplicationDefinition, pyfunc

    class Add(ApplicationDefinition):
        def run(self, a, b=10):
            return a + b

    call = Add.resolve_call(parameters, args)
    assert (call.args, call.kwargs, call.named) == (positional, keywords, keywords)
    # The keyword form is the payload every job had before positional arguments existed.
    payload = pyfunc.deserialize(pyfunc.serialized_arguments("fn.Add", call.kwargs, call.args))
    assert payload == keywords
    assert pyfunc.call(Add, None, payload).value == pyfunc.serialize(Add(None).run(*args,
                                                                                  **parameters))


@pytest.mark.parametrize("args, parameters, positional, keywords, shown", [
    ((1,), {"second": 2}, [1], {"second": 2, "scale": 1}, {"first": 1, "second": 2, "scale": 1}),
    ((1, 2, 3, 4), {"scale": 5, "x": 6}, [1, 2, 3, 4], {"scale": 5, "x": 6},
     {"first": 1, "second": 2, "rest": [3, 4], "scale": 5, "x": 6}),
])
def test_positional_only_parameters_and_star_args_keep_their_positions(
        args, parameters, positional, keywords, shown):
    from balsam.site import ApplicationDefinition, pyfunc

    class Varargs(ApplicationDefinition):
        def run(self, first, /, second, *rest, scale=1, **named):
            return first, second, rest, scale, named

    call = Varargs.resolve_call(parameters, args)
    assert (call.args, call.kwargs, call.named) == (positional, keywords, shown)
    payload = pyfunc.deserialize(pyfunc.serialized_arguments("fn.Varargs", call.kwargs,
                                                             call.args))
    assert payload == (positional, keywords)
    outcome = pyfunc.call(Varargs, None, payload)
    assert not outcome.failed
    assert pyfunc.deserialize(outcome.value) == Varargs(None).run(*args, **parameters)


def test_a_job_with_positional_arguments_stores_and_runs_them(site, cursor, tmp_path):
    from balsam.launcher.pyfunc_task import Runner
    from balsam.site import pyfunc

    job = Job.objects.create(site_path=site, app_name="fn.Varargs", workdir="pos",
                             args=["one", "two", "three"], parameters={"key": {1, 2}})
    cursor.execute(f"SELECT parameters FROM {schema.JOB_TABLE} WHERE job_id = %s", [str(job.id)])
    assert cursor.fetchone()[0] == {"first": "one", "second": "two", "rest": ["three"],
                                    "scale": 1, "key": "<pickled set: {1, 2}>"}
    assert job.parameters["rest"] == ["three"]
    runner = Runner(site)
    try:
        assert runner.run(str(job.id), str(tmp_path)) == 0
    finally:
        runner.close()
    outcome = pyfunc.load_outcomes(cursor, [str(job.id)])[str(job.id)]
    assert not outcome.failed
    assert pyfunc.deserialize(outcome.value) == {"first": "one", "second": "two",
                                                 "rest": ["three"], "scale": 1,
                                                 "named": {"key": {1, 2}}}
    # A job made with keywords only keeps the dict payload (the runner reads both forms).
    plain = Job.objects.create(site_path=site, app_name="fn.Add", workdir="plain",
                               parameters={"a": 1})
    cursor.execute("SELECT args FROM core_jobpayload WHERE job_id = %s", [str(plain.id)])
    assert pyfunc.deserialize(cursor.fetchone()[0]) == {"a": 1, "b": 10}


@pytest.mark.parametrize("app, args, parameters, error, message", [
    ("fn.Add", (1, 2, 3), {}, ParameterError,
     r"args and parameters do not fit Add.run\(\): too many positional arguments"),
    ("fn.Add", (1,), {"a": 2}, ParameterError, r"multiple values for argument 'a'"),
    ("fn.Varargs", (), {"first": 1, "second": 2}, ParameterError,
     r"^parameters do not fit Varargs.run\(\): 'first' parameter is positional only, but was "
     r"passed as a keyword \(run\(first, /, second, \*rest, scale=1, \*\*named\)\)$"),
    ("fn.Echo", ("hi",), {"word": "hi"}, ParameterError,
     r"app Echo has a command_template: positional arguments \(args\) are for function apps"),
    ("fn.Add", "12", {}, TranslationError,
     r"args must be a list or tuple of run\(\)'s positional arguments, not str"),
    ("fn.Add", [lambda: 0, (i for i in ())], {}, SerializationError,  # stored by name
     r"parameter 'b' of app fn.Add cannot be serialized with cloudpickle"),
    ("fn.Varargs", [1, 2, (i for i in ())], {}, SerializationError,
     r"positional argument 3 of app fn.Varargs cannot be serialized with cloudpickle"),
])
def test_positional_arguments_that_do_not_fit_are_refused_when_the_job_is_created(
        site, cursor, app, args, parameters, error, message):
    with pytest.raises(error, match=message):
        Job.objects.create(site_path=site, app_name=app, workdir="x", args=args,
                           parameters=parameters)
    cursor.execute(f"SELECT count(*) FROM {schema.JOB_TABLE}")
    assert cursor.fetchone() == (0,)


@pytest.mark.parametrize("body, message", [
    ("    description = 'nothing'\n", r"needs a command_template \(a non-empty string\) or a "
                                      r"run\(\) method"),
    ("    command_template = 'echo'\n\n    def run(self):\n        pass\n",
     r"defines both run\(\) and command_template"),
    ("    parameters = {'a': 1}\n\n    def run(self, a):\n        pass\n",
     r"a function app takes its parameters .* from run\(\)'s signature"),
])
def test_an_app_needs_exactly_one_of_run_and_command_template(db, body, message):
    site = make_site(db, bad="from balsam.site import ApplicationDefinition\n\n"
                             f"class Bad(ApplicationDefinition):\n{body}")
    try:
        with pytest.raises(AppDefinitionError, match=message):
            Job(site_path=site, app_name="bad.Bad", workdir="x")
    finally:
        shutil.rmtree(os.path.join(db, "apps"), ignore_errors=True)
        sites.forget_apps()


@pytest.mark.slow
def test_serial_mode_runs_function_tasks_in_warm_workers(site, cursor):
    jobs = [add(site, n) for n in range(24)]
    boom = Job(site_path=site, app_name="fn.Boom", workdir="boom",
               parameters={"message": "it broke"})
    class Point:  # a local class: cloudpickle sends it by value
        def __init__(self, x, y):
            self.x, self.y = x, y

    point = Point(3, 4)
    apply = Job(site_path=site, app_name="fn.Apply", workdir="apply",
                parameters={"fn": lambda x, y: x * y, "point": point, "flag": {1, 2}})
    echo = Job(site_path=site, app_name="fn.Echo", workdir="echo", parameters={"word": "hi"})
    sourced = Job(site_path=site, app_name="fn.Sourced", workdir="sourced")
    positional = Job(site_path=site, app_name="fn.Varargs", workdir="positional",
                     args=(1, 2, 3), parameters={"scale": 4})
    Job.objects.bulk_create(jobs + [boom, apply, echo, sourced, positional])
    with settings(site, launcher=QUICK), launchers() as start:
        launcher = start("--consume-all", "--job-mode", "serial")
        # Results are read as the jobs finish, while the launcher runs.
        functions = jobs + [boom, apply, sourced, positional]
        finished = [j.id for j in as_completed(functions, timeout=60)]
        assert sorted(finished) == sorted(j.id for j in functions)
        assert launcher.wait(60) == 0, launcher.output()

    assert [j.result() for j in jobs] == [n + 10 for n in range(24)]
    with open(os.path.join(site, "data", "add", "3", "job.out")) as fh:
        assert fh.read() == "adding 3 10\n"
    with pytest.raises(ValueError, match="it broke") as raised:
        boom.result()
    cause = raised.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "in inner" in cause.text and "raise ValueError(message)" in cause.text
    assert boom.state == "FAILED"
    got = apply.result()
    assert got["value"] == 12 and got["extra"] == {"flag": {1, 2}}
    assert (got["point"].x, got["point"].y) == (3, 4)
    assert got["cwd"] == os.path.join(site, "data", "apply") and got["job"] == str(apply.id)
    echo.refresh_from_db()
    assert echo.state == "JOB_FINISHED"
    greeting, sourced_pid = sourced.result()
    assert greeting == "sourced"
    assert positional.result() == {"first": 1, "second": 2, "rest": [3], "scale": 4,
                                   "named": {}}
    with open(os.path.join(site, "data", "echo", "job.out")) as fh:
        assert fh.read() == "command hi\n"
    cursor.execute("SELECT worker, count(*) FROM core_jobpayload WHERE result IS NOT NULL "
                   "GROUP BY worker")
    per_worker = dict(cursor.fetchall())
    # Warm workers: at most one process per task running at once (4 per node here), each
    # serving many tasks; the command job did not use one.
    sourced_worker = next(w for w in per_worker if w.endswith(f":{sourced_pid}"))
    assert per_worker.pop(sourced_worker) == 1  # started as a command: a process of its own
    assert sum(per_worker.values()) == 27 and len(per_worker) <= 4
    assert max(per_worker.values()) >= 27 // 4


@pytest.mark.slow
def test_mpi_mode_runs_function_tasks_as_commands_and_wait_reports_them(site, cursor):
    jobs = [add(site, n, b=n) for n in range(3)]
    boom = Job(site_path=site, app_name="fn.Boom", workdir="boom", parameters={"message": "no"})
    Job.objects.bulk_create(jobs + [boom])
    done, not_done = wait(jobs, timeout=0.05)
    assert not done and not_done == set(jobs)
    run_launcher(site, "mpi")
    done, not_done = wait(jobs + [boom], timeout=5, return_when=FIRST_COMPLETED)
    assert done == set(jobs + [boom]) and not not_done  # all were done at the first look
    assert sorted(j.result() for j in as_completed(jobs, timeout=5)) == [0, 2, 4]
    with pytest.raises(ValueError, match="no"):
        boom.result()
    cursor.execute("SELECT count(DISTINCT worker) FROM core_jobpayload")
    assert cursor.fetchone() == (4,)  # a process per task


@pytest.mark.slow
def test_a_killed_function_task_takes_its_warm_worker_down_and_the_next_task_gets_a_new_one(
        site, cursor):
    sleeper = Job.objects.create(site_path=site, app_name="fn.Sleep", workdir="sleep",
                                 parameters={"seconds": 300})
    pid_file = os.path.join(site, "data", "sleep", "pid")
    with settings(site, launcher={**QUICK, "kill_check_seconds": 0.2}), launchers() as start:
        launcher = start("--consume-all", "--job-mode", "serial")
        pid = int(wait_for(lambda: os.path.exists(pid_file) and open(pid_file).read(), 60,
                           "the function task to start"))
        # Queued behind the sleeper (each takes the whole node) before the kill: a launcher
        # with nothing left to run exits at once, it would not wait for a job created later.
        after = Job.objects.create(site_path=site, app_name="fn.Add", workdir="after",
                                   parameters={"a": 1})
        sleeper.refresh_from_db()
        sleeper.state = "USER_KILLED"
        sleeper.save()
        wait_for(lambda: process_gone(pid), 30, "the warm worker running the killed task to go")
        assert after.result(timeout=60) == 11
        assert launcher.wait(60) == 0, launcher.output()
    cursor.execute("SELECT worker FROM core_jobpayload WHERE job_id = %s", [str(after.id)])
    assert not cursor.fetchone()[0].endswith(f":{pid}")
    with pytest.raises(JobFailed, match="USER_KILLED"):
        sleeper.result()


def test_the_runner_imports_an_app_file_once_per_content(site, cursor, tmp_path):
    from balsam.launcher.pyfunc_task import Runner
    from balsam.site import pyfunc

    job = Job.objects.create(site_path=site, app_name="fn.Add", workdir="cache",
                             parameters={"a": 5})
    runner = Runner(site)
    try:
        assert runner.run(str(job.id), str(tmp_path)) == 0
        assert runner.run(str(job.id), str(tmp_path)) == 0
        assert runner.loads == 1
        path = os.path.join(site, "apps", "fn.py")
        with open(path) as fh:
            text = fh.read()
        with open(path, "w") as fh:
            fh.write(text.replace("return a + b", "return a - b"))
        assert runner.run(str(job.id), str(tmp_path)) == 0
        assert runner.loads == 2
    finally:
        runner.close()
    outcome = pyfunc.load_outcomes(cursor, [str(job.id)])[str(job.id)]
    assert not outcome.failed and pyfunc.deserialize(outcome.value) == -5


MANY = 10_000
"""Issue 14: results and exceptions of this many function tasks through one launcher."""


@pytest.mark.slow
def test_results_and_exceptions_of_ten_thousand_function_tasks_round_trip(site, cursor):
    from balsam.site import pyfunc

    # 100 workdirs, each shared by 100 jobs run far apart (one output file each, rewritten):
    # 10,000 directories and files would take ~10 s more to remove on this machine.
    jobs = Job.objects.bulk_create([
        Job(site_path=site, app_name="fn.EveryHundredth", workdir=f"many/{i % 100}",
            parameters={"i": i}, node_packing_count=4) for i in range(MANY)])
    run_launcher(site, "serial", timeout=120)

    cursor.execute(f"SELECT state, count(*) FROM {schema.JOB_TABLE} GROUP BY state")
    assert dict(cursor.fetchall()) == {"JOB_FINISHED": MANY - MANY // 100, "FAILED": MANY // 100}
    index = {str(j.id): i for i, j in enumerate(jobs)}
    outcomes = pyfunc.load_outcomes(cursor, index)
    assert len(outcomes) == MANY
    for job_id, outcome in outcomes.items():
        i = index[job_id]
        assert outcome.failed == (i % 100 == 0), i
        if outcome.failed:
            with pytest.raises(KeyError, match=f"task {i}") as raised:
                pyfunc.reraise(outcome, job_id)
            assert 'raise KeyError(f"task {i}")' in raised.value.__cause__.text
        else:
            assert pyfunc.deserialize(outcome.value) == {"i": i}
    # The public API reads them back the same way.
    assert jobs[1].result() == {"i": 1}
    with pytest.raises(KeyError, match="task 9900"):
        jobs[9900].result()

