"""What a serial master may have missed of the idle slots shared between launchers (s20-tail,
reviewed in s20-revtail): the number an earlier ensemble of its session left on the session row
(the row outlives a dead ensemble: :mod:`balsam.launcher.ensemble_restart`), and a notification
sent while its connection was away (LISTEN is renewed only after the reconnection). Real
PostgreSQL, real masters with claimer and writer threads, workers that never report."""
from __future__ import annotations

import time

from launcher_support import add_app, add_jobs
from test_claimer import master_with_claimers
from test_serial_share import idle_slots, settle

from balsam.core import idle_slots as idle_slots_core
from balsam.core import schema
from balsam.defaults import IDLE_SLOTS_NOTIFY_CHANNEL as CHANNEL
from balsam.launcher.status_writers import close_status


def stale(cursor, sid: int, slots: int) -> None:
    """The session row as the master of an earlier ensemble of the same session (restarted
    after a dead rank: :mod:`balsam.launcher.ensemble_restart`) left it when it died idle."""
    cursor.execute(f"UPDATE {schema.SESSION_TABLE} SET idle_slots = %s WHERE id = %s",
                   [slots, sid])


def test_a_new_master_clears_the_idle_slots_an_earlier_ensemble_left_on_its_session(db, cursor):
    # Before, the new master took the row for 0 and never wrote it while busy: the others kept
    # reading 2 idle slots there and gave it work it had no room for (every second, drained).
    add_app(cursor, "app", "true")
    add_jobs(cursor, [{"name": f"j{i}", "application": "app", "state": "PREPROCESSED"}
                      for i in range(4)])
    master, sid = master_with_claimers(db)
    other, sid_other = master_with_claimers(db)
    try:
        stale(cursor, sid, 2)
        settle(master, 4)  # one running and one queued on each node: nothing idles
        master._share(time.monotonic())
        assert idle_slots(cursor, sid) == 0
        assert idle_slots_core.wanted(cursor, sid_other)[0] == 0
    finally:
        for each in (master, other):
            each._close_claimers()
            each._release_all()
            close_status(each.status)


def test_a_new_master_idle_as_the_earlier_one_was_notifies_its_idle_slots(db, cursor):
    # Before, its publish of the number already on the row changed no row: nothing notified,
    # and a master whose hold is full (it never polls) did not give.
    from balsam.db.database import Database

    master, sid = master_with_claimers(db)
    listener = Database(db)
    listener.listen()
    listener.listen_also(CHANNEL)
    try:
        listener.run(lambda cur: cur.execute("SELECT 1"))  # connected: listening
        stale(cursor, sid, 2)
        settle(master, 0)  # its claim found nothing: its two slots idle
        master._share(time.monotonic())
        assert idle_slots(cursor, sid) == 2
        end = time.monotonic() + 10
        while not listener.heard(CHANNEL):
            assert time.monotonic() < end, "the new master's idle slots were not notified"
            listener.wait(0.05)
    finally:
        listener.close()
        master._close_claimers()
        master._release_all()
        close_status(master.status)


def test_a_full_master_gives_after_a_reconnection_during_which_a_launcher_idled(db, cursor):
    # The idle launcher's number was notified while the full master's connection was away: lost
    # (its LISTEN was renewed only after), and the same number is never notified again. Before,
    # a master whose hold is full (it never claims, so never polls) then gave nothing until its
    # next task end (an hour with hour-long tasks) while the other launcher idled; now a
    # reconnection counts as a notification heard: it reads the idle slots once.
    add_app(cursor, "app", "true")
    add_jobs(cursor, [{"name": f"j{i}", "application": "app", "state": "PREPROCESSED"}
                      for i in range(8)])
    full, _ = master_with_claimers(db)
    idle, sid_idle = master_with_claimers(db)
    full.ctx.db.listen()
    full.ctx.db.listen_also(CHANNEL)
    try:
        settle(full, 8, drained=False)
        full._claim(time.monotonic())
        assert not full._drained and not full._claiming()  # full: no claim, none empty
        full._share(time.monotonic())  # (nothing heard: nothing given)
        settle(idle, 0)
        full.ctx.db.sever()  # the connection is lost: its server process ends
        gone = full.ctx.db.backend_pid
        wait_gone(cursor, gone)
        idle._share(time.monotonic())
        assert idle_slots(cursor, sid_idle) == 2  # notified: nobody hears it on that side
        end = time.monotonic() + 10
        while not any("recall" in m for _, m in full.channel.sent) and full.given == 0:
            assert time.monotonic() < end, "the full master gave nothing after reconnecting"
            full.ctx.db.notified()
            full.ctx.db.try_run(lambda cur: cur.execute("SELECT 1"))  # (its next heartbeat)
            full._share(time.monotonic())
            time.sleep(0.01)
        assert full.ctx.db.reconnects == 1
    finally:
        for master in (full, idle):
            master._close_claimers()
            master._release_all()
            close_status(master.status)


def wait_gone(cursor, backend_pid: int) -> None:
    """Wait until the server process ``backend_pid`` ended (its LISTEN with it)."""
    end = time.monotonic() + 10
    while True:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", [backend_pid])
        if cursor.fetchone()[0] == 0:
            return
        assert time.monotonic() < end, "the severed connection's server process did not end"
        time.sleep(0.01)
