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


def test_a_name_several_parents_provide_gets_each_parent_id_as_prefix(tmp_path):
    p1 = make_parent(tmp_path, "p1", {"out.dat": "one", "only1": "x"})
    p2 = make_parent(tmp_path, "p2", {"out.dat": "two", "staged.txt": "parent"})
    work = tmp_path / "child"
    work.mkdir()
    (work / "staged.txt").write_text("staged in")
    created = link_input_files(str(work), "*", [(P1, str(p1)), (P2, str(p2))])
    assert created == ["only1", "11111111_out.dat", "22222222_out.dat", "22222222_staged.txt"]
    assert links(work) == {"only1": f"{p1}/only1", "11111111_out.dat": f"{p1}/out.dat",
                           "22222222_out.dat": f"{p2}/out.dat", "staged.txt": "<file>",
                           "22222222_staged.txt": f"{p2}/staged.txt"}
    assert (work / "22222222_out.dat").read_text() == "two"
    assert sorted(p.name for p in work.glob("*_out.dat")) == ["11111111_out.dat", "22222222_out.dat"]


def test_linking_again_is_idempotent(tmp_path):
    p1 = make_parent(tmp_path, "p1", {"out.dat": "one"})
    p2 = make_parent(tmp_path, "p2", {"out.dat": "two"})
    work = tmp_path / "child"
    parents = [(P1, str(p1)), (P2, str(p2))]
    assert link_input_files(str(work), "*.dat", parents) == ["11111111_out.dat", "22222222_out.dat"]
    before = links(work)
    assert link_input_files(str(work), "*.dat", parents) == []
    assert links(work) == before


def test_a_name_taken_twice_is_an_error_naming_both(tmp_path):
    p2 = make_parent(tmp_path, "p2", {"out.dat": "two"})
    work = tmp_path / "child"
    work.mkdir()
    (work / "out.dat").write_text("mine")
    (work / "22222222_out.dat").write_text("also mine")
    with pytest.raises(InputFilesError) as err:
        link_input_files(str(work), "out.dat", [(P2, str(p2))])
    assert str(err.value) == (f"cannot link {p2}/out.dat into {work}: out.dat and 22222222_out.dat "
                              "both exist")
    p1 = make_parent(tmp_path, "p1", {"out.dat": "one"})
    with pytest.raises(InputFilesError) as err:
        link_input_files(str(work), "out.dat", [(P1, str(p1)), (P2, str(p2))])
    assert str(err.value) == f"cannot link {p2}/out.dat into {work}: 22222222_out.dat exists"


def test_fifty_one_parents_of_a_reduce_are_all_found_by_one_glob(tmp_path):
    parents = []
    for n in range(51):
        pid = f"{n:08x}-0000-4000-8000-000000000000"
        parents.append((pid, str(make_parent(tmp_path, f"p{n}", {"result.json": str(n)}))))
    work = tmp_path / "reduce"
    created = link_input_files(str(work), "result.json", parents)
    assert created == [f"{n:08x}_result.json" for n in range(51)]
    found = sorted(work.glob("*_result.json"))
    assert len(found) == 51 and sum(int(p.read_text()) for p in found) == sum(range(51))


def test_nothing_to_match_links_nothing(tmp_path):
    parent = make_parent(tmp_path, "p1", {"a.dat": "A"})
    work = tmp_path / "child"
    assert link_input_files(str(work), "*.h5", [(P1, str(parent)), (P2, str(tmp_path / "gone"))]) == []
    assert links(work) == {}
    assert link_input_files(str(tmp_path / "never"), "  ", [(P1, str(parent))]) == []
    assert link_input_files(str(tmp_path / "never"), "*", []) == []
    assert not (tmp_path / "never").exists()
