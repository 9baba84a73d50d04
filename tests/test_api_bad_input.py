"""Bad input through the Python API (issue 12): a BalsamError (also a ValueError where it is a bad
value) with a clear message, raised before any row is written."""
from __future__ import annotations

import pytest
from cli_support import snapshot

from balsam.errors import BalsamError


@pytest.fixture
def models(db):
    """The models module; the empty test DB holds app ``hello`` and one CREATED job ``old``."""
    from balsam.core import models as m

    m.ApplicationDefinition.objects.create(name="hello", executable="echo")
    m.BalsamJob(name="old", workflow="wf", application="hello").save()
    return m


GOOD = {"name": "new", "workflow": "wf", "application": "hello"}

BAD_NEW_JOBS = [
    ("running", {"state": "RUNNING"}, "may not be created in state RUNNING"),
    ("running-lowercase", {"state": "running"}, "may not be created in state"),
    ("unknown-app", {"application": "nosuch"}, "application 'nosuch' does not exist"),
    ("empty-name", {"name": ""}, "needs a name"),
    ("blank-name", {"name": "   "}, "needs a name"),
    ("long-name", {"name": "n" * 100_000}, "name is too long"),
    ("long-workflow", {"workflow": "é" * 150}, r"workflow is too long \(300 bytes"),
    ("args-quote", {"args": "--msg 'hi"}, "args cannot be split into words: no closing quotation"),
    ("mpi-flags-quote", {"mpi_flags": '-x "A'}, "mpi_flags cannot be split"),
    ("url-scheme", {"stage_in_url": "gopher://h/x"}, "unknown scheme 'gopher'"),
    ("url-out-scheme", {"stage_out_url": "s3://bucket"}, "unknown scheme 's3'"),
    ("relative-workdir", {"user_workdir": "runs/a"}, "user_workdir must be an absolute path"),
]


@pytest.mark.parametrize("values, message", [c[1:] for c in BAD_NEW_JOBS],
                         ids=[c[0] for c in BAD_NEW_JOBS])
def test_save_of_a_bad_new_job_raises_a_balsam_error_and_writes_nothing(models, cursor, values,
                                                                        message) -> None:
    before = snapshot(cursor)
    with pytest.raises(BalsamError, match=message):
        models.BalsamJob(**dict(GOOD, **values)).save()
    assert snapshot(cursor) == before


@pytest.mark.parametrize("values, message", [c[1:] for c in BAD_NEW_JOBS],
                         ids=[c[0] for c in BAD_NEW_JOBS])
def test_bulk_create_with_one_bad_job_raises_and_writes_nothing(models, cursor, values,
                                                                message) -> None:
    before = snapshot(cursor)
    jobs = [models.BalsamJob(**dict(GOOD, name=f"j{i}")) for i in range(50)]
    jobs[37] = models.BalsamJob(**dict(GOOD, **values))
    with pytest.raises(BalsamError, match=message):
        models.BalsamJob.objects.bulk_create(jobs)
    assert snapshot(cursor) == before


def test_a_new_job_may_start_in_any_state_a_user_may_set(models) -> None:
    job = models.BalsamJob(**dict(GOOD, state="PREPROCESSED", user_workdir="~/runs/a",
                                  stage_in_url="rsync:host:/data", args="--msg 'hi there'"))
    job.save()
    assert models.BalsamJob.objects.get(pk=job.pk).state == "PREPROCESSED"


def test_bad_values_are_value_errors_too(models) -> None:
    with pytest.raises(ValueError, match="args cannot be split"):
        models.BalsamJob(**dict(GOOD, args='"')).save()


def test_queryset_update_to_running_is_refused_with_what_to_do(models, cursor) -> None:
    from balsam.core.states import InvalidStateError

    before = snapshot(cursor)
    with pytest.raises(InvalidStateError, match="update.state='RUNNING'. is refused: only a launcher"):
        models.BalsamJob.objects.all().update(state="RUNNING")
    with pytest.raises(InvalidStateError, match="invalid state 'DONE'"):
        models.BalsamJob.objects.all().update(state="DONE")
    assert snapshot(cursor) == before


@pytest.mark.parametrize("values, message", [
    ({"args": "'x"}, "args cannot be split"),
    ({"user_workdir": "rel"}, "absolute path"),
    ({"name": ""}, "name may not be empty"),
    ({"application": "nosuch"}, "application 'nosuch' does not exist"),
    ({"num_nodes": 0, "state": "READY"}, "num_nodes must be >= 1"),
])
def test_queryset_update_checks_values_as_balsam_job_does(models, cursor, values, message) -> None:
    before = snapshot(cursor)
    with pytest.raises(BalsamError, match=message):
        models.BalsamJob.objects.all().update(**values)
    assert snapshot(cursor) == before


def test_queryset_update_of_state_moves_jobs_through_the_state_writer(models, cursor) -> None:
    assert models.BalsamJob.objects.filter(name="old").update(state="READY") == 1
    cursor.execute("SELECT from_state, to_state, message FROM core_jobevent")
    assert cursor.fetchall() == [("CREATED", "READY", "state set with update()")]


def test_the_schemes_jobs_may_name_are_the_ones_transfers_understand() -> None:
    from balsam.core import schema
    from balsam.processing import transfer

    for scheme in schema.TRANSFER_SCHEMES:
        schema.check_field("stage_in_url", f"{scheme}:/data/x")
        transfer.parse_url(f"{scheme}:/data/x")
    with pytest.raises(schema.FieldError, match="unknown scheme 'gopher'"):
        schema.check_field("stage_in_url", "gopher:/data/x")
    with pytest.raises(transfer.TransferError, match="unsupported transfer scheme 'gopher'"):
        transfer.parse_url("gopher:/data/x")
