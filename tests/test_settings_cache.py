"""Checked settings are reused while ``settings.yml`` and the checking code are unchanged, and
never when either changed, when the file was just edited, or when another account wrote them."""
from __future__ import annotations

import os
import time

import pytest

from balsam.db import dbsettings
from balsam.errors import BalsamError

OLD = time.time() - 3600


def write_settled(tmp_path, text: str) -> str:
    """settings.yml with ``text``, last modified an hour ago (settled: cacheable)."""
    path = tmp_path / "settings.yml"
    path.write_text(text)
    os.utime(path, (OLD, OLD))
    return str(path)


@pytest.fixture(autouse=True)
def settled_at_once(monkeypatch):
    """Files count as settled at once (a file's change time cannot be set back); the test of
    the just-edited rule puts the real delay back."""
    monkeypatch.setattr(dbsettings, "SETTLED_SECONDS", 0.0)


def refuse_to_check(path: str) -> dict:
    raise AssertionError("checked again instead of reusing the checked settings")


def test_checked_settings_are_reused_until_the_file_changes(tmp_path, monkeypatch):
    write_settled(tmp_path, "launcher:\n  max_retries: 3\n")
    first = dbsettings.load(str(tmp_path))
    assert (tmp_path / dbsettings.CHECKED_FILENAME).exists()
    with monkeypatch.context() as m:
        m.setattr(dbsettings, "_check", refuse_to_check)
        assert dbsettings.load(str(tmp_path)) == first
    # Same size, same modification time put back: the change time still moved (one clock tick
    # of the file system later: what the settling delay guarantees outside this test).
    time.sleep(0.05)
    write_settled(tmp_path, "launcher:\n  max_retries: 5\n")
    assert dbsettings.load(str(tmp_path))["launcher"]["max_retries"] == 5
    write_settled(tmp_path, "launcher:\n  max_retrie: 5\n")
    with pytest.raises(BalsamError, match="did you mean `launcher.max_retries`"):
        dbsettings.load(str(tmp_path))


def test_a_just_edited_file_is_checked_every_time(tmp_path, monkeypatch):
    monkeypatch.setattr(dbsettings, "SETTLED_SECONDS", 2.0)
    (tmp_path / "settings.yml").write_text("local_nodes: 2\n")
    assert dbsettings.load(str(tmp_path))["local_nodes"] == 2
    assert not (tmp_path / dbsettings.CHECKED_FILENAME).exists()


def test_other_checking_code_or_another_owner_means_checking_again(tmp_path, monkeypatch):
    write_settled(tmp_path, "local_nodes: 3\n")
    dbsettings.load(str(tmp_path))
    checked = []
    monkeypatch.setattr(dbsettings, "_check", lambda path: checked.append(path) or {"x": 1})
    monkeypatch.setattr(dbsettings, "_CHECKING_CODE", dbsettings._CHECKING_CODE[:-1])
    assert dbsettings.load(str(tmp_path)) == {"x": 1}
    monkeypatch.undo()
    monkeypatch.setattr(dbsettings, "_check", lambda path: checked.append(path) or {"y": 2})
    if os.geteuid() == 0:  # a cache another account wrote is not trusted
        os.chown(tmp_path / dbsettings.CHECKED_FILENAME, 65534, 65534)
        assert dbsettings.load(str(tmp_path)) == {"y": 2}
    assert len(checked) == 1 + (os.geteuid() == 0)
