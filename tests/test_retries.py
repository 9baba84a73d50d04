"""Retry limits: failed runs are counted from a job's events, walltime stops of the launcher are
not, and a job over its limit is FAILED with the reason instead of retried or handled."""
from __future__ import annotations

import pytest
from cli_support import assert_one_line_error
from conftest import run_balsam

from balsam.core import lifecycle, retries, schema
from balsam.core.states import State
from balsam.processing import transitions, worker


@pytest.fixture
def apps(db):
    from balsam.core.models import ApplicationDefinition

    ApplicationDefinition.objects.create(name="plain", executable="true")
    ApplicationDefinition.objects.create(name="post", executable="true", postprocess="/bin/true")
    return db


def job(name, app="plain", state="PREPROCESSED", **fields):
    from balsam.core.models import BalsamJob

    j = BalsamJob(name=name, application=app, state=state, **fields)
    j.save()
    return str(j.pk)


def state_of(cursor, job_id):
    cursor.execute(f"SELECT state FROM {schema.JOB_TABLE} WHERE job_id = %s", [job_id])
    return cursor.fetchone()[0]


def last_message(cursor, job_id):
    cursor.execute(f"SELECT message FROM {schema.EVENT_TABLE} WHERE job_id = %s "
                   "ORDER BY id DESC LIMIT 1", [job_id])
    return cursor.fetchone()[0]


def run_ends(cursor, job_id, state=State.RUN_TIMEOUT, message="killed by a signal"):
    """One run of ``job_id`` that ends in ``state`` with ``message``."""
    assert lifecycle.transition(cursor, [job_id], State.RUNNING, "started")
    assert lifecycle.transition(cursor, [job_id], state, message)


def test_timeouts_are_retried_up_to_the_jobs_limit_then_the_job_fails_saying_why(apps, cursor):
    j = job("t", max_retries=2)
    for _ in range(2):
        run_ends(cursor, j)
        transitions.advance(cursor)
        assert state_of(cursor, j) == "RESTART_READY"
    run_ends(cursor, j)
    counts = transitions.advance(cursor)
    assert state_of(cursor, j) == "FAILED" and counts["failed_runs"] == 1
    assert last_message(cursor, j) == retries.over_limit_message(3, 2)
    assert "max_retries 2" in last_message(cursor, j)


def test_walltime_stops_of_the_launcher_do_not_use_up_retries(apps, cursor):
    # The launcher tests pin the message both modes write at their time limit to this text.
    assert retries.WALLTIME_STOP_MESSAGE == (
        "stopped by the launcher: the launcher's time limit was reached")
    j = job("w", max_retries=0)
    for _ in range(5):
        run_ends(cursor, j, message=retries.WALLTIME_STOP_MESSAGE)
        transitions.advance(cursor)
        assert state_of(cursor, j) == "RESTART_READY"
    assert retries.usage(cursor, [j], 3) == {j: (0, 0)}
    # A stop for another reason (a signal) is a failure.
    run_ends(cursor, j, message=retries.STOP_MESSAGE_PREFIX + "the launcher received SIGTERM")
    transitions.advance(cursor)
    assert state_of(cursor, j) == "FAILED"
    assert retries.usage(cursor, [j], 3) == {j: (1, 0)}


def test_minus_one_takes_the_db_default_and_a_job_limit_overrides_it(apps, cursor):
    default, own = job("default"), job("own", max_retries=5)
    for _ in range(2):
        run_ends(cursor, default)
        run_ends(cursor, own)
        transitions.advance(cursor, policy=retries.RetryPolicy(max_retries=1))
    assert (state_of(cursor, default), state_of(cursor, own)) == ("FAILED", "RESTART_READY")
    assert retries.usage(cursor, [default, own], 1) == {default: (2, 1), own: (2, 5)}


def test_a_handled_error_over_its_limit_fails_without_running_the_handler(apps, cursor):
    from balsam.core import leases

    under = job("under", app="post", post_error_handler=True, max_retries=1)
    over = job("over", app="post", post_error_handler=True, max_retries=1)
    run_ends(cursor, under, State.RUN_ERROR, "exit 1")
    run_ends(cursor, over, State.RUN_ERROR, "exit 1")
    lifecycle.transition(cursor, [over], State.RESTART_READY, "the handler retried it")
    run_ends(cursor, over, State.RUN_ERROR, "exit 1")
    sid = leases.open_session(cursor, hostname="h", pid=1, job_mode="processing",
                              num_nodes=0, lease_seconds=60)
    claimed = worker.claim_step(cursor, sid, None, apps, max_retries=3)
    assert claimed is not None and claimed.row["job_id"] == under
    assert worker.claim_step(cursor, sid, None, apps, max_retries=3) is None  # not `over`
    transitions.advance(cursor)
    assert (state_of(cursor, under), state_of(cursor, over)) == ("RUN_ERROR", "FAILED")
    assert last_message(cursor, over) == retries.over_limit_message(2, 1)


def test_unhandled_errors_and_disabled_retries_keep_their_own_messages(apps, cursor):
    err, noretry = job("err", max_retries=0), job("nr", max_retries=0, auto_timeout_retry=False)
    run_ends(cursor, err, State.RUN_ERROR, "exit 1")
    run_ends(cursor, noretry)
    transitions.advance(cursor)
    assert last_message(cursor, err) == "run error not handled (no post_error_handler)"
    assert last_message(cursor, noretry) == "timed out; automatic retry is disabled"


def test_max_retries_and_priority_values_are_checked():
    assert schema.coerce_field("max_retries", "-1") == -1
    assert schema.coerce_field("priority", "-7") == -7
    with pytest.raises(schema.FieldError, match="max_retries must be >= -1"):
        schema.coerce_field("max_retries", "-2")
    with pytest.raises(schema.FieldError, match="priority must be a whole number"):
        schema.coerce_field("priority", "high")


def test_the_settings_default_is_three_and_must_not_be_negative():
    from balsam.core.tunables import Tunables
    from balsam.db import settings_schema
    from balsam.errors import BalsamError

    assert settings_schema.defaults_dict()["launcher"]["max_retries"] == 3
    with pytest.raises(BalsamError, match="launcher.max_retries` must be at least 0"):
        settings_schema.validate({"launcher": {"max_retries": -1}}, "settings.yml")
    assert Tunables.from_settings({"max_retries": 0}).max_retries == 0


def test_the_cli_sets_priority_and_retries_and_ls_history_shows_their_use(apps, cursor):
    made = run_balsam("job", "--name", "c", "--workflow", "w", "--application", "plain",
                      "--priority", "7", "--max-retries", "2", "--yes")
    assert made.returncode == 0, made.stderr
    cursor.execute(f"SELECT job_id, priority, max_retries FROM {schema.JOB_TABLE}")
    j, priority, limit = cursor.fetchone()
    assert (priority, limit) == (7, 2)
    assert run_balsam("modify", str(j)[:8], "priority", "-3").returncode == 0
    lifecycle.transition(cursor, [j], State.PREPROCESSED, "ready")
    run_ends(cursor, str(j))
    out = run_balsam("ls", "--history").stdout
    assert f"Job c [{j}]  (priority -3; 1 failed run(s) counted, max_retries 2)\n" in out
    assert_one_line_error(run_balsam("modify", str(j)[:8], "max_retries", "-5"),
                          "max_retries must be >= -1")
    assert_one_line_error(run_balsam("job", "--name", "d", "--workflow", "w", "--application",
                                     "plain", "--priority", "high", "--yes"),
                          "priority must be a whole number")


def test_a_back_off_delays_automatic_retries_doubling_per_failed_run(apps, cursor):
    policy = retries.RetryPolicy(max_retries=5, backoff_seconds=100.0)
    assert [policy.backoff(n) for n in (0, 1, 2, 3, 8, 30)] == [0, 100, 200, 400, 6400, 6400]
    assert retries.RetryPolicy().backoff(4) == 0.0  # the default: no back-off
    j = job("b")
    run_ends(cursor, j)
    transitions.advance(cursor, policy=policy)
    assert state_of(cursor, j) == "RUN_TIMEOUT"  # waits 100 s
    cursor.execute(f"UPDATE {schema.JOB_TABLE} SET state_since = now() - interval '101 seconds' "
                   "WHERE job_id = %s", [j])
    transitions.advance(cursor, policy=policy)
    assert state_of(cursor, j) == "RESTART_READY"
    run_ends(cursor, j)
    cursor.execute(f"UPDATE {schema.JOB_TABLE} SET state_since = now() - interval '150 seconds' "
                   "WHERE job_id = %s", [j])
    transitions.advance(cursor, policy=policy)
    assert state_of(cursor, j) == "RUN_TIMEOUT"  # the second failure waits 200 s
    # A walltime stop is no failure: no back-off for it.
    k = job("k")
    run_ends(cursor, k, message=retries.WALLTIME_STOP_MESSAGE)
    transitions.advance(cursor, policy=policy)
    assert state_of(cursor, k) == "RESTART_READY"


def test_the_retry_settings_reach_the_launchers_policy():
    from balsam.core.tunables import Tunables
    from balsam.db import settings_schema

    launcher = settings_schema.validate({"launcher": {"max_retries": 0,
                                                      "retry_backoff_seconds": 30}},
                                        "settings.yml")["launcher"]
    expected = retries.RetryPolicy(max_retries=0, backoff_seconds=30.0)
    assert Tunables.from_settings(launcher).retry_policy() == expected


def exhaust(cursor, j, limit):
    """Run ``j`` (PREPROCESSED) until it is FAILED over its limit: ``limit`` retries, then one
    failure too many."""
    for _ in range(limit):
        run_ends(cursor, j)
        transitions.advance(cursor)
        assert state_of(cursor, j) == "RESTART_READY"
    run_ends(cursor, j)
    transitions.advance(cursor)
    assert state_of(cursor, j) == "FAILED"
    assert last_message(cursor, j) == retries.over_limit_message(limit + 1, limit)


@pytest.mark.parametrize("how", ["cli", "api"])
def test_resetting_a_failed_job_gives_it_its_whole_retry_limit_again(apps, cursor, how):
    from balsam.core.models import BalsamJob

    j = job("r", max_retries=2)
    exhaust(cursor, j, 2)
    if how == "cli":
        proc = run_balsam("modify", j[:8], "state", "READY")
        assert proc.returncode == 0, proc.stderr
    else:
        BalsamJob.objects.get(pk=j).update_state("READY", "reset by the user")
    assert retries.usage(cursor, [j], 3) == {j: (0, 2)}
    transitions.advance(cursor)
    assert state_of(cursor, j) == "PREPROCESSED"
    exhaust(cursor, j, 2)  # two retries again, then FAILED
    assert retries.usage(cursor, [j], 3) == {j: (3, 2)}


def test_only_leaving_a_final_state_resets_the_count(apps, cursor):
    j = job("n", max_retries=5)
    run_ends(cursor, j)
    # A user moving a RUN_TIMEOUT job on by hand is no reset: its failure still counts.
    lifecycle.transition(cursor, [j], State.READY, "by hand", user=True)
    assert retries.usage(cursor, [j], 3) == {j: (1, 5)}
    lifecycle.transition(cursor, [j], State.USER_KILLED, "killed", user=True)
    lifecycle.transition(cursor, [j], State.PREPROCESSED, "revived", user=True, force=True)
    assert retries.usage(cursor, [j], 3) == {j: (0, 5)}
    run_ends(cursor, j)
    assert retries.usage(cursor, [j], 3) == {j: (1, 5)}
