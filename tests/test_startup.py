"""Serial-mode start-up (issue 16): what the launcher and rank 0 do before the ensemble runs.

Real database (the ``db`` fixture), real subprocesses; nothing here is timed.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys

from balsam.launcher.serial_mode import SerialConfig


def test_the_launcher_starts_its_ensemble_before_importing_the_database_layer():
    """``balsam.launcher.main`` (everything the launcher needs up to the ensemble's launch)
    imports neither the lease and lifecycle SQL, nor the database driver, nor
    ``importlib.metadata`` (the mpich wheel's ``mpiexec`` is found without it)."""
    probe = ("import sys, balsam.launcher.main, balsam.launcher.serial_mode, "
             "balsam.platform.mpi.ensemble, balsam.launcher.watchdog; print(sorted(m for m in "
             "('balsam.core.leases', 'balsam.core.lifecycle', 'psycopg2', 'importlib.metadata') "
             "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_the_wheel_mpiexec_is_the_one_importlib_metadata_finds():
    import importlib.metadata

    from balsam.platform.mpi.choice import wheel_mpiexec

    wheel_mpiexec.cache_clear()
    try:
        dist = importlib.metadata.distribution("mpich")
    except importlib.metadata.PackageNotFoundError:
        assert wheel_mpiexec() is None
        return
    expected = [os.path.normpath(str(dist.locate_file(f))) for f in dist.files or []
                if f.name == "mpiexec" and f.parent.name == "bin"]
    assert wheel_mpiexec() == expected[0]
    assert os.access(wheel_mpiexec(), os.X_OK)


def test_the_rank_is_known_before_mpi_only_from_this_launchs_variable():
    """(More in tests/test_early_rank.py.) The variable the config names counts only with the
    launch id the launcher put in the environment; a stale ``PMI_RANK`` alone counts for
    nothing."""
    from balsam.launcher.rank_boot import rank_before_init
    from balsam.platform.early_rank import LAUNCH_ID

    config = SerialConfig(db_path="/nowhere", session_id=0, settings={"launcher": {}},
                          hosts=["h", "h", "h"], cores_per_node=2, gpus_per_node=0,
                          rank_evidence={"rank": "PMI_RANK", "size": "PMI_SIZE", "id": "ab12"})
    ours = {LAUNCH_ID: "ab12", "PMI_SIZE": "4"}
    assert rank_before_init({**ours, "PMI_RANK": "0"}, config) == 0
    assert rank_before_init({**ours, "PMI_RANK": "3"}, config) == 3
    assert rank_before_init(ours, config) is None
    assert rank_before_init({**ours, "PMI_RANK": "x"}, config) is None
    assert rank_before_init({"PMI_RANK": "0", "PMI_SIZE": "4"}, config) is None


def test_rank_0_connects_and_reads_the_session_id_in_its_boot_thread(db):
    """:class:`MasterBoot` (run while MPI initialises): the database connection is open and the
    session id the launcher writes is read; end of file gives 0 (the master then exits)."""
    from balsam.launcher.rank_boot import MasterBoot

    config = SerialConfig(db_path=db, session_id=0, settings={"launcher": {}},
                          hosts=["h"], cores_per_node=2, gpus_per_node=0)
    old = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for data, expected in ((b"42\n", 42), (b"", 0)):
            read_fd, write_fd = os.pipe()
            boot = MasterBoot(config)
            boot.fd = read_fd
            boot.start()
            os.write(write_fd, data)
            os.close(write_fd)
            boot.join()
            os.close(read_fd)
            assert boot.session_id == expected
            assert boot.db.transactions == 1  # the connecting transaction, committed
            assert boot.db.run(lambda cur: (cur.execute("SELECT 1"), cur.fetchone())[1]) == (1,)
            boot.db.close()
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
