"""balsam.processing.transfer: real local copies; rsync, scp and globus-url-copy through the
recording fakes in tests/fakes/bin (which copy locally after stripping the host part)."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from balsam.processing.transfer import TransferError, parse_url, stage_in, stage_out

FAKES = Path(__file__).parent / "fakes" / "bin"


@pytest.fixture
def fake_env(tmp_path):
    """An environment with the recording fakes first on PATH; ``.log`` lists their calls."""
    log = tmp_path / "transfer-calls.jsonl"
    env = dict(os.environ, PATH=f"{FAKES}{os.pathsep}{os.environ['PATH']}",
               BALSAM_FAKE_TRANSFER_LOG=str(log))

    def calls() -> list[dict]:
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    return env, calls


def make_tree(root: Path) -> Path:
    """root/data/{a.txt, b.dat, sub/c.txt} with known contents."""
    (root / "data" / "sub").mkdir(parents=True)
    (root / "data" / "a.txt").write_text("A\n")
    (root / "data" / "b.dat").write_text("B\n")
    (root / "data" / "sub" / "c.txt").write_text("C\n")
    return root / "data"


def tree(root: Path) -> dict[str, str]:
    """relative path -> contents of every file under root ('<dir>' for directories)."""
    return {p.relative_to(root).as_posix(): ("<dir>" if p.is_dir() else p.read_text())
            for p in sorted(root.rglob("*"))}


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_bytes().rpartition(b")")[2].split()[0]
    except FileNotFoundError:
        return False
    return state != b"Z"


@pytest.mark.parametrize("url, expected", [
    ("/data/in", ("local", "/data/in")),
    ("relative/dir", ("local", "relative/dir")),
    ("/odd:name", ("local", "/odd:name")),
    ("local:/data/in", ("local", "/data/in")),
    ("file:///data/in", ("local", "/data/in")),
    ("file://localhost/data/in", ("local", "/data/in")),
    ("rsync:user@host:/data/in", ("rsync", "user@host:/data/in")),
    ("scp:host:/data/in/", ("scp", "host:/data/in/")),
    ("gsiftp://gridftp.host/data/in", ("globus", "gsiftp://gridftp.host/data/in")),
    ("globus:gsiftp://gridftp.host/data/in", ("globus", "gsiftp://gridftp.host/data/in")),
])
def test_the_protocol_is_chosen_by_the_text_before_the_first_colon(url, expected):
    assert parse_url(url) == expected


@pytest.mark.parametrize("url, message", [
    ("http://example.org/x", "http://example.org/x: unsupported transfer scheme 'http' (use a path, "
     "local:, file://, rsync:, scp:, gsiftp:// or globus:)"),
    ("file://otherhost/x", "file://otherhost/x: file:// URLs must name a local path (file:///PATH)"),
    ("  ", "empty transfer URL"),
])
def test_unsupported_urls_are_refused_with_one_line(url, message):
    with pytest.raises(TransferError) as err:
        parse_url(url)
    assert str(err.value) == message


def test_local_stage_in_of_a_directory_arrives_as_a_subdirectory_with_times_kept(tmp_path):
    src = make_tree(tmp_path / "src")
    os.utime(src / "a.txt", (1_000_000_000, 1_000_000_000))
    work = tmp_path / "work"
    assert stage_in(str(src), str(work), timeout=10) == ["data"]
    assert tree(work) == {"data": "<dir>", "data/a.txt": "A\n", "data/b.dat": "B\n",
                          "data/sub": "<dir>", "data/sub/c.txt": "C\n"}
    assert (work / "data" / "a.txt").stat().st_mtime == 1_000_000_000
    # A retry copies again over what is there.
    assert stage_in(f"local:{src}", str(work), timeout=10) == ["data"]
    assert len(tree(work)) == 5


def test_local_stage_in_of_a_glob_copies_the_contents(tmp_path):
    src = make_tree(tmp_path / "src")
    work = tmp_path / "work"
    assert stage_in(f"file://{src}/*", str(work), timeout=10) == ["a.txt", "b.dat", "sub"]
    assert tree(work) == {"a.txt": "A\n", "b.dat": "B\n", "sub": "<dir>", "sub/c.txt": "C\n"}


def test_local_stage_in_of_a_symlink_copies_what_it_names(tmp_path):
    src = make_tree(tmp_path / "src")
    (tmp_path / "link").symlink_to(src)
    work = tmp_path / "work"
    assert stage_in(str(tmp_path / "link"), str(work), timeout=10) == ["link"]
    assert not (work / "link").is_symlink()
    assert (work / "link" / "sub" / "c.txt").read_text() == "C\n"


@pytest.mark.parametrize("suffix, problem", [("missing", "does not exist"),
                                             ("*.none", "matches nothing")])
def test_local_stage_in_of_nothing_fails_naming_the_source(tmp_path, suffix, problem):
    source = f"{tmp_path}/{suffix}"
    with pytest.raises(TransferError) as err:
        stage_in(source, str(tmp_path / "work"), timeout=10)
    assert str(err.value) == f"stage-in from {source}: {source} {problem}"


def test_local_stage_out_sends_matches_flat_and_creates_the_destination(tmp_path):
    work = make_tree(tmp_path)
    dest = tmp_path / "out"
    sent = stage_out(str(work), "*.txt sub/*.txt  *.txt", f"local:{dest}", timeout=10)
    assert sent == ["a.txt", "sub/c.txt"]
    assert tree(dest) == {"a.txt": "A\n", "c.txt": "C\n"}
    assert stage_out(str(work), "sub", str(dest), timeout=10) == ["sub"]
    assert tree(dest)["sub/c.txt"] == "C\n"


def test_stage_out_with_no_patterns_sends_nothing(tmp_path):
    assert stage_out(str(tmp_path), "  ", "rsync:host:/nowhere", timeout=1) == []


@pytest.mark.parametrize("patterns, dest, message", [
    ("*.h5 *.nc", "{t}/out", "the stage-out files '*.h5 *.nc' match nothing in {w}"),
    ("a.txt", "{t}/no/such/out", "the parent directory of {t}/no/such/out does not exist"),
    ("a.txt", "{w}/b.dat", "{w}/b.dat is not a directory"),
    ("*.txt sub/*.txt", "{t}/out", "several stage-out files are named 'a.txt'"),
])
def test_local_stage_out_errors_name_the_problem(tmp_path, patterns, dest, message):
    work = make_tree(tmp_path)
    (work / "sub" / "a.txt").write_text("another a\n")
    dest = dest.format(t=tmp_path, w=work)
    with pytest.raises(TransferError) as err:
        stage_out(str(work), patterns, dest, timeout=10)
    assert str(err.value) == f"stage-out to {dest}: " + message.format(t=tmp_path, w=work)
    assert not (tmp_path / "out").exists()


def test_rsync_stage_in_and_out_run_one_rsync_each(tmp_path, fake_env):
    env, calls = fake_env
    src = make_tree(tmp_path / "remote")
    work = tmp_path / "work"
    assert stage_in(f"rsync:user@host:{src}", str(work), timeout=10, env=env) == ["data"]
    assert tree(work)["data/sub/c.txt"] == "C\n"
    sent = stage_out(str(work / "data"), "*.txt sub", f"rsync:host:{tmp_path}/dst", timeout=10,
                     env=env)
    assert sent == ["a.txt", "sub"]
    assert tree(tmp_path / "dst") == {"a.txt": "A\n", "sub": "<dir>", "sub/c.txt": "C\n"}
    assert [(c["program"], c["argv"]) for c in calls()] == [
        ("rsync", ["-a", f"user@host:{src}", f"{work}/"]),
        ("rsync", ["-a", f"{work}/data/a.txt", f"{work}/data/sub", f"host:{tmp_path}/dst/"]),
    ]


def test_remote_stage_in_of_contents_reports_the_new_entries(tmp_path, fake_env):
    env, calls = fake_env
    src = make_tree(tmp_path / "remote")
    work = tmp_path / "work"
    work.mkdir()
    (work / "old").write_text("kept\n")
    assert stage_in(f"rsync:host:{src}/", str(work), timeout=10, env=env) == ["a.txt", "b.dat", "sub"]
    assert stage_in(f"scp:host:{src}/*.txt", str(work), timeout=10, env=env) == ["a.txt"]
    assert calls()[1]["argv"] == ["-p", "-r", f"host:{src}/*.txt", f"{work}/"]


def test_scp_stage_in_and_out(tmp_path, fake_env):
    env, calls = fake_env
    src = make_tree(tmp_path / "remote")
    work = tmp_path / "work"
    assert stage_in(f"scp:me@login:{src}/a.txt", str(work), timeout=10, env=env) == ["a.txt"]
    (tmp_path / "dst").mkdir()
    assert stage_out(str(work), "a.txt", f"scp:login:{tmp_path}/dst/", timeout=10,
                     env=env) == ["a.txt"]
    assert (tmp_path / "dst" / "a.txt").read_text() == "A\n"
    assert [(c["program"], c["argv"]) for c in calls()] == [
        ("scp", ["-p", "-r", f"me@login:{src}/a.txt", f"{work}/"]),
        ("scp", ["-p", "-r", f"{work}/a.txt", f"login:{tmp_path}/dst/"]),
    ]


def test_globus_stage_in_and_out_use_globus_url_copy_per_file(tmp_path, fake_env):
    env, calls = fake_env
    src = make_tree(tmp_path / "remote")
    work = tmp_path / "work"
    assert stage_in(f"gsiftp://grid.host{src}/b.dat", str(work), timeout=10, env=env) == ["b.dat"]
    (work / "dir").mkdir()
    (work / "dir" / "x").write_text("X\n")
    url = f"globus:gsiftp://grid.host{tmp_path}/dst"
    assert stage_out(str(work), "b.dat dir", url, timeout=10, env=env) == ["b.dat", "dir"]
    assert tree(tmp_path / "dst") == {"b.dat": "B\n", "dir": "<dir>", "dir/x": "X\n"}
    assert [(c["program"], c["argv"]) for c in calls()] == [
        ("globus-url-copy", ["-r", f"gsiftp://grid.host{src}/b.dat", f"file://{work}/"]),
        ("globus-url-copy", ["-r", "-cd", f"file://{work}/b.dat",
                             f"gsiftp://grid.host{tmp_path}/dst/"]),
        ("globus-url-copy", ["-r", "-cd", f"file://{work}/dir/",
                             f"gsiftp://grid.host{tmp_path}/dst/dir/"]),
    ]


@pytest.mark.parametrize("url, program", [("rsync:h:/x", "rsync"), ("scp:h:/x", "scp"),
                                          ("gsiftp://h/x", "globus-url-copy")])
def test_a_missing_copy_program_is_reported_as_not_installed(tmp_path, url, program):
    (tmp_path / "emptybin").mkdir()
    env = dict(os.environ, PATH=str(tmp_path / "emptybin"))
    with pytest.raises(TransferError) as err:
        stage_in(url, str(tmp_path / "work"), timeout=10, env=env)
    assert str(err.value) == f"stage-in from {url}: {program} is not installed (not found on PATH)"


def test_a_failing_copy_reports_program_exit_code_and_last_stderr_line(tmp_path, fake_env):
    env, _ = fake_env
    env["BALSAM_FAKE_TRANSFER_FAIL"] = "12"
    with pytest.raises(TransferError) as err:
        stage_out(str(make_tree(tmp_path)), "a.txt", "rsync:host:/dst", timeout=10, env=env)
    assert str(err.value) == ("stage-out to rsync:host:/dst: rsync exited with code 12: "
                              "permission denied on remote side")


def test_a_missing_remote_source_fails_with_the_copy_programs_message(tmp_path, fake_env):
    env, _ = fake_env
    with pytest.raises(TransferError) as err:
        stage_in(f"scp:host:{tmp_path}/nothing", str(tmp_path / "work"), timeout=10, env=env)
    assert str(err.value) == (f"stage-in from scp:host:{tmp_path}/nothing: scp exited with code 23: "
                              f"scp (fake): link_stat '{tmp_path}/nothing' failed: No such file or "
                              "directory (2)")


def test_a_copy_that_exceeds_its_timeout_is_killed(tmp_path, fake_env):
    env, calls = fake_env
    env["BALSAM_FAKE_TRANSFER_SLEEP"] = "30"
    start = time.monotonic()
    with pytest.raises(TransferError) as err:
        stage_in("scp:host:/x", str(tmp_path / "work"), timeout=0.5, env=env)
    assert time.monotonic() - start < 20  # the time-out, not the 30-s copy
    assert str(err.value) == "stage-in from scp:host:/x: scp timed out after 0.5 s"
    assert not alive(calls()[0]["pid"])
