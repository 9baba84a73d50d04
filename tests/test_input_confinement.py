"""``input_files`` never links anything from outside a parent's working directory (issue 12,
item 9): patterns with ``..`` or absolute paths are refused when a job is created (CLI, Python
API, bulk insert, modify) and again when linking; matches are resolved (symlinks included) and
must lie inside the parent's directory or the DB's data tree, checked before anything is linked.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from cli_support import add_app as cli_add_app
from cli_support import assert_one_line_error, snapshot
from conftest import make_public_tmpdir, run_balsam
from launcher_procs import launchers
from launcher_support import QUICK, add_app, add_jobs, events, settings, states, workdir

from balsam.core import lifecycle, schema
from balsam.processing.inputs import InputFilesError, link_input_files

P1 = "11111111-aaaa-4aaa-8aaa-aaaaaaaaaaaa"
ESCAPES = ["../*", "../..", "/etc/passwd", "sub/../../x", "a.dat ../../secret", "/*"]


def parent_with(tmp_path: Path, files: dict[str, str]) -> Path:
    parent = tmp_path / "parent"
    for rel, text in files.items():
        (parent / rel).parent.mkdir(parents=True, exist_ok=True)
        (parent / rel).write_text(text)
    return parent


# ---- at link time ---------------------------------------------------------------------------------

@pytest.mark.parametrize("patterns", ESCAPES)
def test_patterns_leaving_the_parent_link_nothing(tmp_path, patterns):
    parent = parent_with(tmp_path, {"sub/a.dat": "A", "a.dat": "A"})
    (tmp_path / "secret").write_text("S")
    work = tmp_path / "child"
    with pytest.raises(InputFilesError, match="outside the parent's working directory"):
        link_input_files(str(work), patterns, [(P1, str(parent))])
    assert not work.exists()


def test_a_symlink_in_the_parent_leading_outside_is_refused_and_nothing_is_linked(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "private.key").write_text("secret")
    parent = parent_with(tmp_path, {"a.dat": "A"})
    os.symlink(outside, parent / "escape")  # a directory link
    os.symlink(outside / "private.key", parent / "key.dat")  # a file link
    work = tmp_path / "child"
    for patterns in ("escape/*", "*.dat", "*"):
        with pytest.raises(InputFilesError) as err:
            link_input_files(str(work), patterns, [(P1, str(parent))])
        assert f"resolves to {outside}" in str(err.value)
        assert not work.exists()  # a.dat was fine, but nothing is linked
    assert link_input_files(str(work), "a.dat", [(P1, str(parent))]) == ["a.dat"]


def test_links_inside_the_parent_and_into_trusted_roots_are_followed(tmp_path):
    data = tmp_path / "data"
    grand = data / "grand"
    grand.mkdir(parents=True)
    (grand / "seed.txt").write_text("seed")
    parent = data / "parent"
    parent.mkdir()
    (parent / "real.dat").write_text("R")
    os.symlink(parent / "real.dat", parent / "alias.dat")
    os.symlink(grand / "seed.txt", parent / "seed.txt")  # the parent's own input link
    # The parent's directory reached through a symlink is still the parent's directory.
    os.symlink(parent, tmp_path / "parent-link")
    work = tmp_path / "child"
    with pytest.raises(InputFilesError, match="seed.txt"):
        link_input_files(str(work), "*", [(P1, str(tmp_path / "parent-link"))])
    assert link_input_files(str(work), "*", [(P1, str(tmp_path / "parent-link"))],
                            trusted_roots=[str(data)]) == ["alias.dat", "real.dat", "seed.txt"]
    assert (work / "seed.txt").read_text() == "seed"


# ---- at job creation ------------------------------------------------------------------------------

@pytest.mark.parametrize("patterns", [["../.."], ["/etc/passwd"], ["ok.dat", "x/../../y"]])
def test_balsam_job_refuses_escaping_input_files_in_one_line_and_writes_nothing(
        cursor, patterns):
    cli_add_app(cursor, "hello", "echo")
    before = snapshot(cursor)
    proc = run_balsam("job", "--name", "j", "--workflow", "wf", "--application", "hello",
                      "--input-files", *patterns, "--yes")
    assert_one_line_error(proc, "input_files pattern", "outside the parent's working directory")
    assert snapshot(cursor) == before


def test_balsam_modify_refuses_an_escaping_input_files(cursor):
    cli_add_app(cursor, "hello", "echo")
    (job_id,) = add_jobs(cursor, [{"name": "j", "application": "hello", "input_files": "*.dat"}])
    proc = run_balsam("modify", job_id, "input_files", "../*")
    assert_one_line_error(proc, "'../*'")
    cursor.execute(f"SELECT input_files FROM {schema.JOB_TABLE}")
    assert cursor.fetchall() == [("*.dat",)]


def test_the_python_api_refuses_escaping_input_files_and_writes_nothing(db):
    from balsam.core.models import BalsamJob
    from balsam.launcher import dag

    dag.add_app("sim", "/bin/echo")
    with pytest.raises(ValueError, match="outside the parent's working directory"):
        dag.add_job("a", "wf", "sim", input_files="../*")
    with pytest.raises(ValueError, match="'/data/x'"):
        BalsamJob(name="b", workflow="wf", application="sim", input_files="*.in /data/x").save()
    with pytest.raises(ValueError, match="'../in'"):
        BalsamJob.objects.bulk_create([BalsamJob(name="c", application="sim"),
                                       BalsamJob(name="d", application="sim", input_files="../in")])
    ok = dag.add_job("e", "wf", "sim", input_files="*.dat sub/*.in")
    with pytest.raises(ValueError, match="'../x'"):
        BalsamJob.objects.filter(pk=ok.pk).update(input_files="../x")
    assert [j.name for j in BalsamJob.objects.all()] == ["e"]
    assert BalsamJob.objects.get(pk=ok.pk).input_files == "*.dat sub/*.in"


# ---- end to end: a real launcher's stage-in -------------------------------------------------------

@pytest.mark.slow
def test_stage_in_fails_a_job_whose_parent_links_outside_and_passes_a_chain_of_links(db, cursor):
    outside = Path(make_public_tmpdir("balsam-outside-"))
    (outside / "private.key").write_text("secret")
    add_app(cursor, "cat", "/bin/cat")
    grand, parent, leaky = add_jobs(cursor, [
        {"name": "grand", "application": "cat", "state": "JOB_FINISHED"},
        {"name": "parent", "application": "cat", "state": "JOB_FINISHED"},
        {"name": "leaky", "application": "cat", "state": "JOB_FINISHED"}])
    chained, refused, dotdot = add_jobs(cursor, [
        {"name": "chained", "application": "cat", "input_files": "*", "args": "seed.txt"},
        {"name": "refused", "application": "cat", "input_files": "*", "args": "a.dat"},
        {"name": "dotdot", "application": "cat", "args": "a.dat"}])
    # Written past the creation check (an older Balsam, plain SQL): the link step refuses it.
    cursor.execute(f"UPDATE {schema.JOB_TABLE} SET input_files = '../*' WHERE job_id = %s",
                   [dotdot])
    dirs = {j: Path(workdir(db, cursor, j)) for j in (grand, parent, leaky)}
    for d in dirs.values():
        d.mkdir(parents=True)
    (dirs[grand] / "seed.txt").write_text("seed\n")
    os.symlink(dirs[grand] / "seed.txt", dirs[parent] / "seed.txt")  # parent's own input link
    (dirs[leaky] / "a.dat").write_text("fine\n")
    os.symlink(outside / "private.key", dirs[leaky] / "key")
    lifecycle.add_dependency(cursor, parent, chained)
    lifecycle.add_dependency(cursor, leaky, refused)
    lifecycle.add_dependency(cursor, leaky, dotdot)
    with settings(db, launcher=QUICK), launchers() as start:
        launcher = start("--consume-all", "--job-mode", "mpi")
        assert launcher.wait(90) == 0, launcher.output()
    assert states(cursor) == {"grand": "JOB_FINISHED", "parent": "JOB_FINISHED",
                              "leaky": "JOB_FINISHED", "chained": "JOB_FINISHED",
                              "refused": "FAILED", "dotdot": "FAILED"}
    with open(os.path.join(workdir(db, cursor, chained), "chained.out")) as fh:
        assert fh.read() == "seed\n"
    message = events(cursor, refused)[-1][3]
    assert message.startswith("stage-in failed: input file ") and "private.key" in message
    assert "'../*'" in events(cursor, dotdot)[-1][3]
    for job in (refused, dotdot):
        assert not os.path.exists(workdir(db, cursor, job)) or \
            os.listdir(workdir(db, cursor, job)) == []
