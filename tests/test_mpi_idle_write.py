"""The MPI-mode loop, in process against the real PostgreSQL: with nothing running, an end
waiting in the status buffer is written by the next cycle, not after ``status_flush_seconds``
(no end can join it; before, the loop spun on a zero timeout until the flush was due)."""
from __future__ import annotations

import logging
import threading

from launcher_support import add_app, add_jobs, job_row

from balsam.core import leases
from balsam.core.tunables import Tunables
from balsam.db import dbsettings
from balsam.db.database import Database
from balsam.launcher.context import Context
from balsam.launcher.flight import Flight
from balsam.launcher.mpi_mode import MPIMode
from balsam.platform.allocation import Allocation


def context(db: str, database: Database, sid: int) -> Context:
    tunables = Tunables.from_settings(dict(dbsettings.defaults()["launcher"],
                                           status_flush_seconds=600, idle_wait_seconds=600,
                                           kill_check_seconds=600))
    return Context(db_path=db, settings={}, tunables=tunables,
                   alloc=Allocation(("n1", "n2"), 2, 0, "local", "", None), db=database,
                   session_id=sid, job_mode="mpi", wf_filter=None, persistent=False,
                   processing=True, gpus_per_node=0, stop=threading.Event(),
                   log=logging.getLogger("test"), base_env={}, flavour="mpich",
                   mpi_executable=None)


def test_an_idle_loop_writes_a_pending_end_at_once(db, cursor):
    add_app(cursor, "noop", "/bin/true")
    (job_id,) = add_jobs(cursor, [{"name": "j", "application": "noop", "state": "PREPROCESSED"}])
    database = Database(db)
    try:
        sid = database.run(lambda cur: leases.open_session(
            cur, hostname="host", pid=1, job_mode="mpi", num_nodes=2, lease_seconds=60))
        database.run(lambda cur: leases.claim(cur, sid, 1, serial=False, max_nodes=2))
        assert database.run(lambda cur: leases.start(cur, sid, [job_id])) == [job_id]
        mode = MPIMode(context(db, database, sid))
        mode.flight = Flight()
        try:
            # Its run ended and was reaped; nothing else to do: no claim, pass or timer due.
            mode.status.done(job_id)
            mode.want_claim = mode.want_process = False
            assert not mode.status.due()  # the flush interval is far away
            assert mode._cycle()  # ... yet the end goes now
            mode._land()
        finally:
            mode.flight.close()
        assert not mode.status.pending
        assert job_row(cursor, job_id)["state"] == "JOB_FINISHED"  # RUN_DONE, nothing to do
    finally:
        database.close()
