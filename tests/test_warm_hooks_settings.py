"""The user's switch for warm hook runners (``settings.yml`` ``launcher: warm_hooks``) and the
runner's own stderr, which goes to a log file beside the launcher's and service's logs."""
from __future__ import annotations

import logging
import os
import subprocess
import threading

import pytest

from balsam.core.tunables import Tunables
from balsam.db import dbsettings
from balsam.errors import BalsamError
from balsam.processing.pools import start_transition_pool
from balsam.processing.warm_hooks import HookRunner
from balsam.processing.worker import TransitionWorker


def tunables_of(db: str, launcher_yaml: str) -> Tunables:
    with open(os.path.join(db, "settings.yml"), "w") as fh:
        fh.write(f"launcher:\n{launcher_yaml}")
    return Tunables.from_settings(dbsettings.load(db)["launcher"])


def hook_runners(db: str, tunables: Tunables) -> list[object]:
    """The hook runner of each transition worker a pool built from ``tunables`` has."""
    pool = start_transition_pool(2, db, tunables, wf_filter=None, base_env={},
                                 log=logging.getLogger("test-warm-switch"),
                                 draining=threading.Event())
    assert pool is not None
    try:
        return [w.hooks for w in pool.workers if isinstance(w, TransitionWorker)]
    finally:
        pool.stop(timeout=30.0)


def test_warm_hooks_false_in_settings_makes_the_workers_run_hooks_as_scripts(db):
    settings_file = os.path.join(db, "settings.yml")
    with open(settings_file) as fh:
        original = fh.read()
    try:
        on = tunables_of(db, "  heartbeat_seconds: 5\n")
        assert on.warm_hooks is True
        runners = hook_runners(db, on)
        assert len(runners) == 2 and all(isinstance(r, HookRunner) for r in runners)
        off = tunables_of(db, "  warm_hooks: false\n")
        assert off.warm_hooks is False
        assert hook_runners(db, off) == [None, None]
        with pytest.raises(BalsamError, match="`launcher.warm_hooks` must be true or false, not 'no'"):
            tunables_of(db, "  warm_hooks: 'no'\n")
        with pytest.raises(BalsamError, match="unknown key `launcher.warm_hook` .*`launcher.warm_hooks`"):
            tunables_of(db, "  warm_hook: false\n")
    finally:
        with open(settings_file, "w") as fh:
            fh.write(original)


def test_tunables_take_only_a_bool_for_a_switch_and_only_numbers_for_the_rest():
    base = dbsettings.defaults()["launcher"]
    assert base["warm_hooks"] is True and Tunables.from_settings(base).warm_hooks is True
    with pytest.raises(BalsamError, match="launcher.warm_hooks must be true or false, not 1"):
        Tunables.from_settings(dict(base, warm_hooks=1))
    with pytest.raises(BalsamError, match="launcher.lease_seconds must be a positive number, not True"):
        Tunables.from_settings(dict(base, lease_seconds=True))


def test_the_default_settings_file_spells_the_switch_as_yaml_true(tmp_path):
    text = dbsettings.render_default(str(tmp_path))
    assert "  warm_hooks: true\n" in text
    (tmp_path / "settings.yml").write_text(text)
    assert dbsettings.load(str(tmp_path))["launcher"]["warm_hooks"] is True


def test_a_runner_that_cannot_start_leaves_its_stderr_in_the_db_log_directory(db, tmp_path):
    runner = HookRunner()
    log = open(tmp_path / "preprocess.log", "wb")
    # An interpreter that cannot find its standard library dies at once, saying why on stderr.
    env = dict(os.environ, BALSAM_DB_PATH=db, PYTHONHOME="/nonexistent/balsam-test")
    try:
        rc, timed_out, aborted, failure = runner.run(
            "preprocess", "demo.Hello", str(tmp_path), env, log, timeout=120.0,
            should_abort=None, poll_seconds=0.05, grace=1.0)
    finally:
        runner.close()
        log.close()
    assert (rc, timed_out, aborted) == (None, False, False)
    path = runner.log_path
    assert os.path.dirname(path) == os.path.join(db, "log")
    assert os.path.basename(path).startswith("hook-runner_") and path.endswith(f"_{os.getpid()}.log")
    assert failure.startswith("cannot run the hook in the warm hook runner: ")
    assert failure.endswith(f"(the runner's stderr: {path})")
    with open(path) as fh:
        text = fh.read()
    assert text.startswith("# ") and "starting warm hook runner 1 of process" in text
    assert "Fatal Python error" in text and "/nonexistent/balsam-test" in text


def test_a_runner_without_a_writable_log_directory_still_starts_with_stderr_nowhere(tmp_path):
    (tmp_path / "log").write_text("a file where the log directory should be")
    runner = HookRunner()
    fd = runner._open_log(str(tmp_path))
    assert fd == subprocess.DEVNULL and runner.log_path == "" and runner._log_note() == ""
