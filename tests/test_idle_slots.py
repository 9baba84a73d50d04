"""``balsam.core.idle_slots.wanted`` on a real database: the idle slots of the other serial
launchers, and among how many serial launchers holding work they are shared. A launcher's
transition workers (and MPI-mode launchers) have session rows too, but never give work back
(:mod:`balsam.launcher.serial_share`): counted as holders, each give shrank (two transition
workers per launcher: a third of the idle slots per give)."""
from __future__ import annotations

import time

from balsam.core import idle_slots, leases


def session(cursor, mode: str) -> int:
    return leases.open_session(cursor, hostname="h", pid=1, job_mode=mode, num_nodes=1,
                               lease_seconds=60)


def test_only_serial_launchers_share_the_idle_slots(db, cursor):
    me, idle = session(cursor, "serial"), session(cursor, "serial")
    for mode in ("processing", "processing", "mpi"):
        session(cursor, mode)
    idle_slots.publish(cursor, idle, 3)
    assert idle_slots.wanted(cursor, me) == (3, 1)  # before: (3, 4)
    other = session(cursor, "serial")  # a second serial launcher holding work
    assert idle_slots.wanted(cursor, me) == (3, 2)
    idle_slots.publish(cursor, other, 1)
    assert idle_slots.wanted(cursor, me) == (4, 1)


def test_givable_counts_only_work_queued_in_other_live_serial_sessions(db, cursor):
    from launcher_support import add_app, add_jobs

    from balsam.core import schema

    add_app(cursor, "app", "true")
    add_jobs(cursor, [{"name": f"j{i}", "application": "app", "state": "PREPROCESSED",
                       "workflow": "wf" if i < 6 else "other"} for i in range(8)])
    me, other, dead, mpi = (session(cursor, m) for m in ("serial", "serial", "serial", "mpi"))
    claimed = {sid: [str(r["job_id"]) for r in leases.claim(cursor, sid, 2, serial=True,
                                                            max_nodes=1, wf_filter="wf")]
               for sid in (me, other, dead, mpi)}
    leases.start(cursor, other, claimed[other][:1])  # running: never given back
    cursor.execute(f"UPDATE {schema.SESSION_TABLE} SET heartbeat = now() - interval '1 hour' "
                   "WHERE id = %s", [dead])
    assert idle_slots.givable(cursor, me) == 1  # not its own, the MPI one's or the dead one's
    leases.claim(cursor, other, 2, serial=True, max_nodes=1, wf_filter="other")
    assert idle_slots.givable(cursor, me) == 3
    assert idle_slots.givable(cursor, me, wf_filter="wf") == 1


def test_a_new_idle_count_is_heard_on_its_own_channel_and_wakes_no_job_wait(db, cursor):
    from balsam.db.database import Database
    from balsam.defaults import IDLE_SLOTS_NOTIFY_CHANNEL as CHANNEL

    listener = Database(db)
    listener.listen()
    listener.listen_also(CHANNEL)
    listener.run(lambda cur: cur.execute("SELECT 1"))  # connected: listening on both channels
    sid = session(cursor, "serial")
    idle_slots.publish(cursor, sid, 2)
    assert listener.wait(0.3) is False  # not a job change: no wake-up, no claim
    assert listener.heard(CHANNEL) and not listener.heard(CHANNEL)
    idle_slots.publish(cursor, sid, 2)  # unchanged: not notified again
    idle_slots.publish(cursor, sid, 0)  # none idle: nothing to give, not notified
    assert listener.wait(0.3) is False and not listener.heard(CHANNEL)
    idle_slots.publish(cursor, sid, 3)
    listener.wait(0.3)
    assert listener.heard(CHANNEL)
    listener.close()


def test_job_changes_and_idle_counts_heard_together_are_both_kept_across_a_reconnection(
        db, cursor):
    # Guards the split of one batch of notifications (s20-revtail review: found sound): a job
    # change read with an idle count still wakes the job wait, neither consumes the other, and
    # after a reconnection both channels are listened to again.
    from balsam.db.database import Database
    from balsam.defaults import IDLE_SLOTS_NOTIFY_CHANNEL as CHANNEL
    from balsam.defaults import NOTIFY_CHANNEL

    listener = Database(db)
    listener.listen()
    listener.listen_also(CHANNEL)
    sid = session(cursor, "serial")
    for count, reconnects in ((2, 0), (3, 1)):
        listener.run(lambda cur: cur.execute("SELECT 1"))  # (re)connected: listening
        assert listener.reconnects == reconnects
        idle_slots.publish(cursor, sid, count)
        cursor.execute(f"NOTIFY {NOTIFY_CHANNEL}")
        end, woke = time.monotonic() + 10, False
        while not listener.heard(CHANNEL):
            assert time.monotonic() < end, "the idle count was not heard"
            woke = listener.wait(0.05) or woke
        assert woke or listener.notified() or listener.wait(5.0), "the job change was lost"
        listener.sever()  # the next statement reconnects
    listener.close()
