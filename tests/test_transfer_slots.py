"""The site API's transfer slots (``ApplicationDefinition.transfers``, ``Job(transfers=...)``)
as transfer items: checked when the job is made, staged in under the slot's ``local_path``
(renaming) and out from it, over local copies and rsync/scp to the throwaway sshd of
tests/test_transfers.py; a Globus task nobody waits for is cancelled."""
from __future__ import annotations

import json
import os
import shutil
import sys
import time

import pytest
import test_transfers
from test_api import make_site
from test_transfers import (
    HOST,
    UUID_REMOTE,
    UUID_SITE,
    FakeGlobus,
    drain,
    fake_backend,
    job_states,
    last_message,
    transfer_settings,
)

from balsam.api import Job, sites
from balsam.core import lifecycle, schema
from balsam.db import dbsettings
from balsam.db.database import Database
from balsam.errors import BalsamError
from balsam.processing import transitions
from balsam.processing.transfers.step import TransferStep
from balsam.site import AppDefinitionError, ApplicationDefinition, ParameterError

sshd, area = test_transfers.sshd, test_transfers.area  # the fixtures, shared

APPS = '''from balsam.site import ApplicationDefinition


class Sim(ApplicationDefinition):
    command_template = "sim"
    transfers = {
        "input_file": {"required": True, "direction": "in", "local_path": "input.nc",
                       "description": "the mesh"},
        "tables": {"direction": "in", "local_path": "sub/tables", "recursive": True},
        "result": {"direction": "out", "local_path": "out.h5"},
    }
'''


@pytest.fixture
def site(db):
    yield make_site(db, slots=APPS)
    shutil.rmtree(os.path.join(db, "apps"), ignore_errors=True)  # the next test's site is its own
    sites.forget_apps()


def write(path: str, text: str) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        fh.write(text)
    return path


def read(path: str) -> str:
    with open(path) as fh:
        return fh.read()


def make_jobs(site: str, cursor, fills: list[dict[str, str]]) -> list[Job]:
    """Jobs of slots.Sim filling ``fills``, workdirs ``<area>/w<n>`` (each test its own)."""
    tag = os.path.basename(os.path.dirname(
        next(v for f in fills for v in f.values() if isinstance(v, str) and "/" in v)))
    jobs = Job.objects.bulk_create([Job(site_path=site, app_name="slots.Sim",
                                        workdir=f"{tag}/w{n}", transfers=fill)
                                    for n, fill in enumerate(fills)])
    transitions.advance(cursor)
    return jobs


def run_and_stage_out(db: str, cursor, jobs: list[Job]) -> None:
    """The jobs ran (they wrote out.h5 themselves): RUN_DONE, then their stage-out."""
    ids = [str(j.id) for j in jobs]
    for job in jobs:
        write(os.path.join(job.classic.working_directory, "out.h5"),
              f"result of {os.path.basename(job.workdir)}")
    lifecycle.transition(cursor, ids, "RUNNING")
    lifecycle.transition(cursor, ids, "RUN_DONE")
    transitions.advance(cursor)
    assert set(job_states(cursor, ids).values()) == {"POSTPROCESSED"}
    drain(db, states=("POSTPROCESSED",))


def test_local_slots_stage_in_renamed_and_stage_out_to_exact_paths(site, db, cursor, area):
    write(f"{area}/in/f7.dat", "mesh 7")
    write(f"{area}/in/tables/a.txt", "table a")
    with transfer_settings(db, locations={"here": "local"}):
        jobs = make_jobs(site, cursor, [
            {"input_file": f"here:{area}/in/f7.dat", "tables": f"{area}/in/tables",
             "result": f"here:{area}/results/run0.h5"},
            {"input_file": f"local:{area}/in/f7.dat", "result": f"{area}/results/"}])
        ids = [str(j.id) for j in jobs]
        assert set(job_states(cursor, ids).values()) == {"READY"}
        drain(db)
        assert set(job_states(cursor, ids).values()) == {"PREPROCESSED"}
        wd = [j.classic.working_directory for j in jobs]
        assert read(f"{wd[0]}/input.nc") == read(f"{wd[1]}/input.nc") == "mesh 7"
        assert read(f"{wd[0]}/sub/tables/a.txt") == "table a"
        assert not os.path.exists(f"{wd[0]}/f7.dat")
        assert last_message(cursor, ids[0]) == "nothing to preprocess: ready to run"
        run_and_stage_out(db, cursor, jobs)
    assert set(job_states(cursor, ids).values()) == {"JOB_FINISHED"}
    assert read(f"{area}/results/run0.h5") == "result of w0"
    assert read(f"{area}/results/out.h5") == "result of w1"  # a directory: under its name
    assert last_message(cursor, ids[0]) == "staged out 1 file(s) for slot(s) result"


def test_rsync_and_scp_slots_rename_over_ssh_in_one_connection_per_batch(
        site, db, cursor, sshd, area):
    for n in range(3):
        write(f"{area}/remote/f{n}.dat", f"input {n}")
    write(f"{area}/remote/tables/t.txt", "tables")
    os.mkdir(f"{area}/back")
    locations = {"far": f"rsync://{HOST}", "farscp": f"scp:{HOST}"}
    with transfer_settings(db, sshd, locations=locations):
        jobs = make_jobs(site, cursor, [
            {"input_file": f"far:{area}/remote/f0.dat", "tables": f"far:{area}/remote/tables",
             "result": f"far:{area}/back/run0.h5"},
            {"input_file": f"far:{area}/remote/f1.dat", "result": f"far:{area}/back/"},
            {"input_file": f"farscp:{area}/remote/f2.dat",
             "result": f"farscp:{area}/back/run2.h5"},
            {"input_file": f"far:{area}/remote/missing.dat"}])
        ids = [str(j.id) for j in jobs]
        before = sshd.connections()
        drain(db)
        assert sshd.connections() - before == 2  # one rsync batch, one scp batch
        got = job_states(cursor, ids)
        assert [got[i] for i in ids] == ["PREPROCESSED"] * 3 + ["FAILED"]
        assert last_message(cursor, ids[3]).startswith(
            "stage-in failed: slot 'input_file': stage-in from ")
        assert "missing.dat" in last_message(cursor, ids[3])
        wd = [j.classic.working_directory for j in jobs]
        assert [read(f"{w}/input.nc") for w in wd[:3]] == ["input 0", "input 1", "input 2"]
        assert read(f"{wd[0]}/sub/tables/t.txt") == "tables"
        assert sorted(os.listdir(wd[1])) == ["input.nc"]
        run_and_stage_out(db, cursor, jobs[:3])
    assert set(job_states(cursor, ids[:3]).values()) == {"JOB_FINISHED"}
    assert sorted(os.listdir(f"{area}/back")) == ["out.h5", "run0.h5", "run2.h5"]
    assert read(f"{area}/back/run2.h5") == "result of w2"


def test_bad_slot_values_are_refused_when_the_job_is_made_and_nothing_is_written(
        site, db, cursor, area):
    def refused(fill, match):
        with pytest.raises(ParameterError, match=match):
            Job.objects.bulk_create([
                Job(site_path=site, app_name="slots.Sim", workdir="ok",
                    transfers={"input_file": f"{area}/x"}),
                Job(site_path=site, app_name="slots.Sim", workdir="bad", transfers=fill)])

    with transfer_settings(db, locations={"far": f"rsync://{HOST}"}):
        refused({"input_file": "/x", "outptu": "/y"},
                r"unknown transfer slot\(s\) outptu for app Sim \(its slots: input_file, tables")
        refused({"result": "/y"}, r"missing required transfer slot\(s\) input_file")
        refused({"input_file": "laptop:/x"}, "slot 'input_file' of app Sim: 'laptop:/x': "
                "unknown location 'laptop' .*defines far")
        refused({"input_file": "data/x"}, "a relative path")
        refused({"input_file": "gsiftp://h/x"}, "gsiftp:// cannot fill a slot")
        refused({"input_file": 7}, "7 is not a location")
    with pytest.raises(BalsamError, match="transfers must be a dict"):
        Job(site_path=site, app_name="slots.Sim", workdir="w", transfers=["x"])
    cursor.execute(f"SELECT count(*) FROM {schema.JOB_TABLE}")
    assert cursor.fetchone()[0] == 0
    cursor.execute(f"SELECT count(*) FROM {schema.TRANSFER_SLOT_TABLE}")
    assert cursor.fetchone()[0] == 0


def test_slot_declarations_and_locations_are_checked(db):
    class BadPath(ApplicationDefinition):
        command_template = "x"
        transfers = {"a": {"direction": "in", "local_path": "../up"}}

    class BadKey(ApplicationDefinition):
        command_template = "x"
        transfers = {"a": {"direction": "in", "local_path": "a", "recursve": True}}

    for cls, match in ((BadPath, "local_path '../up' must be a relative path"),
                       (BadKey, "unknown key.*recursve")):
        with pytest.raises(AppDefinitionError, match=match):
            cls.check()
    for locations, match in (({"far": "ftp://host"}, "far: 'ftp://host' is not globus://"),
                             ({"rsync": "local"}, "alias 'rsync' must be a name")):
        with transfer_settings(db, locations=locations):
            with pytest.raises(BalsamError, match=f"transfers.locations.*{match}"):
                dbsettings.load(db)


def test_slot_items_show_in_both_dialects(site, db, cursor, area, balsam_cli):
    write(f"{area}/f.dat", "12345")
    with transfer_settings(db, locations={"here": "local"}):
        (job,) = make_jobs(site, cursor, [{"input_file": f"here:{area}/f.dat"}])
        drain(db)
    again = Job.objects.get(site_path=site, workdir=job.workdir)
    assert again.transfers == {"input_file": f"here:{area}/f.dat"}
    one = Job.objects.create(site_path=site, app_name="slots.Sim", workdir="one",
                             transfers={"input_file": "/x/f.dat", "result": "/x/r/"})
    assert Job.objects.get(site_path=site, id=one.id).transfers == {
        "input_file": "/x/f.dat", "result": "/x/r/"}
    one.delete()  # its slots go with it
    cursor.execute(f"SELECT count(*) FROM {schema.TRANSFER_SLOT_TABLE}")
    assert cursor.fetchone()[0] == 1
    table = balsam_cli("ls", "transfers")
    assert table.returncode == 0, table.stderr
    header, row = [[c.strip() for c in ln.split("|")] for ln in table.stdout.splitlines()
                   if "|" in ln]
    assert dict(zip(header, row))["slot"] == "input_file"
    assert dict(zip(header, row))["state"] == "done"
    listed = balsam_cli("ls", "transfers", "--format", "json")
    (item,) = json.loads(listed.stdout)
    assert (item["job_id"], item["slot"], item["source"], item["destination"]) == (
        str(job.id), "input_file", f"{area}/f.dat",
        os.path.join(job.classic.working_directory, "input.nc"))


def test_a_globus_task_of_killed_jobs_only_is_cancelled(site, db, cursor, monkeypatch):
    record = FakeGlobus()
    backend = fake_backend(record)
    cancelled: list[str] = []
    backend.GlobusTransfer.cancel = lambda self, task_id: cancelled.append(task_id)
    monkeypatch.setitem(sys.modules, "balsam.processing.transfers.globus", backend)
    with transfer_settings(db, globus_endpoint_id=UUID_SITE, globus_client_id="client-1",
                           poll_seconds=0.01, locations={"dtn": f"globus://{UUID_REMOTE}"}):
        jobs = make_jobs(site, cursor, [{"input_file": f"dtn:/d/f{n}.dat"} for n in range(2)])
        ids = [str(j.id) for j in jobs]
        conn = Database(db, "test-slots")
        step = TransferStep(db, dbsettings.load(db))
        try:
            step.run_pass(conn)
            (source, dest, entries, _), = record.submitted
            assert sorted((e.source_path, e.destination_path) for e in entries) == sorted(
                (f"/d/f{n}.dat", os.path.join(j.classic.working_directory, "input.nc"))
                for n, j in enumerate(jobs))
            lifecycle.kill(cursor, ids[:1])
            time.sleep(0.02)
            step.run_pass(conn)
            assert cancelled == []  # the other job still waits for its file
            lifecycle.kill(cursor, ids[1:])
            time.sleep(0.02)
            step.run_pass(conn)
        finally:
            step.close()
            conn.close()
    assert cancelled == ["task-1"]
    cursor.execute(f"SELECT state, message FROM {schema.TRANSFER_BATCH_TABLE}")
    assert cursor.fetchone() == ("failed", "globus task task-1 cancelled: no job waits for its "
                                           "items (killed, failed or reset)")
    cursor.execute(f"SELECT DISTINCT state, error FROM {schema.TRANSFER_ITEM_TABLE}")
    assert cursor.fetchall() == [("failed", "cancelled: its job no longer waits for it (the job "
                                            "is USER_KILLED)")]


def test_a_job_linking_parents_files_is_claimed_only_once_its_slot_items_are_done(
        site, db, cursor, area):
    from launcher_support import add_app, add_jobs

    from balsam.core import leases
    from balsam.processing import worker

    add_app(cursor, "echo", "/bin/echo")
    (parent,) = add_jobs(cursor, [{"name": "parent", "application": "echo"}])
    transitions.advance(cursor)
    lifecycle.transition(cursor, [parent], "RUNNING")
    lifecycle.transition(cursor, [parent], "RUN_DONE")
    transitions.advance(cursor)
    write(f"{area}/f.dat", "mesh")
    child = Job.objects.create(site_path=site, app_name="slots.Sim", workdir=f"{area[1:]}/c",
                               transfers={"input_file": f"{area}/f.dat"}, parent_ids=[parent])
    cursor.execute(f"UPDATE {schema.JOB_TABLE} SET input_files = '*.dat' WHERE job_id = %s",
                   [str(child.id)])
    transitions.advance(cursor)
    assert job_states(cursor, [parent, str(child.id)]) == {
        parent: "JOB_FINISHED", str(child.id): "READY"}
    sid = leases.open_session(cursor, hostname="h", pid=1, job_mode="processing", num_nodes=0,
                              lease_seconds=60)
    assert worker.claim_step(cursor, sid, None, db) is None  # its slot item is not done
    with transfer_settings(db):
        step = TransferStep(db, dbsettings.load(db))
        conn = Database(db, "test-slots")
        try:
            while step.run_pass(conn)["recorded"] == 0:
                step.wait(0.05)
        finally:
            step.close()
            conn.close()
    assert job_states(cursor, [str(child.id)]) == {str(child.id): "READY"}  # links still due
    claimed = worker.claim_step(cursor, sid, None, db)
    assert claimed is not None and claimed.row["job_id"] == str(child.id)
    assert claimed.row["staged_files"] == 1
    assert read(os.path.join(child.classic.working_directory, "input.nc")) == "mesh"
