"""balsam.processing.inputs: input_files links from parents' working directories (real files)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from balsam.processing.inputs import InputFilesError, link_input_files

P1 = "11111111-aaaa-4aaa-8aaa-aaaaaaaaaaaa"
P2 = "22222222-bbbb-4bbb-8bbb-bbbbbbbbbbbb"


def make_parent(root: Path, name: str, files: dict[str, str]) -> Path:
    workdir = root / name
    for rel, text in files.items():
        (workdir / rel).parent.mkdir(parents=True, exist_ok=True)
        (workdir / rel).write_text(text)
    return workdir


def links(workdir: Path) -> dict[str, str]:
    """name -> link target (or '<file>') of every entry of workdir."""
    return {p.name: (os.readlink(p) if p.is_symlink() else "<file>") for p in sorted(workdir.iterdir())}


def test_star_links_every_file_but_dot_files_to_its_absolute_path(tmp_path):
    parent = make_parent(tmp_path, "p1", {"b.out": "B", "a.dat": "A", ".hidden": "H", "d/x": "X"})
    work = tmp_path / "child"
    assert link_input_files(str(work), "*", [(P1, str(parent))]) == ["a.dat", "b.out", "d"]
    assert links(work) == {"a.dat": f"{parent}/a.dat", "b.out": f"{parent}/b.out", "d": f"{parent}/d"}
    assert (work / "d" / "x").read_text() == "X"


def test_overlapping_patterns_and_subdirectory_patterns_link_each_file_once(tmp_path):
    parent = make_parent(tmp_path, "p1", {"r.dat": "1", "r.log": "2", "sub/s.dat": "3"})
    work = tmp_path / "child"
    assert link_input_files(str(work), "*.dat r.*  sub/*.dat", [(P1, str(parent))]) == \
        ["r.dat", "r.log", "s.dat"]
    assert links(work)["s.dat"] == f"{parent}/sub/s.dat"


def test_a_name_taken_by_another_parent_or_staged_data_gets_the_parent_id_suffix(tmp_path):
    p1 = make_parent(tmp_path, "p1", {"out.dat": "one", "only1": "x"})
    p2 = make_parent(tmp_path, "p2", {"out.dat": "two", "staged.txt": "parent"})
    work = tmp_path / "child"
    work.mkdir()
    (work / "staged.txt").write_text("staged in")
    created = link_input_files(str(work), "*", [(P1, str(p1)), (P2, str(p2))])
    assert created == ["only1", "out.dat", "out.dat_22222222", "staged.txt_22222222"]
    assert links(work) == {"only1": f"{p1}/only1", "out.dat": f"{p1}/out.dat",
                           "out.dat_22222222": f"{p2}/out.dat", "staged.txt": "<file>",
                           "staged.txt_22222222": f"{p2}/staged.txt"}
    assert (work / "out.dat_22222222").read_text() == "two"


def test_linking_again_is_idempotent(tmp_path):
    p1 = make_parent(tmp_path, "p1", {"out.dat": "one"})
    p2 = make_parent(tmp_path, "p2", {"out.dat": "two"})
    work = tmp_path / "child"
    parents = [(P1, str(p1)), (P2, str(p2))]
    assert link_input_files(str(work), "*.dat", parents) == ["out.dat", "out.dat_22222222"]
    before = links(work)
    assert link_input_files(str(work), "*.dat", parents) == []
    assert links(work) == before


def test_a_name_taken_twice_is_an_error_naming_both(tmp_path):
    p2 = make_parent(tmp_path, "p2", {"out.dat": "two"})
    work = tmp_path / "child"
    work.mkdir()
    (work / "out.dat").write_text("mine")
    (work / "out.dat_22222222").write_text("also mine")
    with pytest.raises(InputFilesError) as err:
        link_input_files(str(work), "out.dat", [(P2, str(p2))])
    assert str(err.value) == (f"cannot link {p2}/out.dat into {work}: out.dat and out.dat_22222222 "
                              "both exist")


def test_nothing_to_match_links_nothing(tmp_path):
    parent = make_parent(tmp_path, "p1", {"a.dat": "A"})
    work = tmp_path / "child"
    assert link_input_files(str(work), "*.h5", [(P1, str(parent)), (P2, str(tmp_path / "gone"))]) == []
    assert links(work) == {}
    assert link_input_files(str(tmp_path / "never"), "  ", [(P1, str(parent))]) == []
    assert link_input_files(str(tmp_path / "never"), "*", []) == []
    assert not (tmp_path / "never").exists()
