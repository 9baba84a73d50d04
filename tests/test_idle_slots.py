"""``balsam.core.idle_slots.wanted`` on a real database: the idle slots of the other serial
launchers, and among how many serial launchers holding work they are shared. A launcher's
transition workers (and MPI-mode launchers) have session rows too, but never give work back
(:mod:`balsam.launcher.serial_share`): counted as holders, each give shrank (two transition
workers per launcher: a third of the idle slots per give)."""
from __future__ import annotations

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
