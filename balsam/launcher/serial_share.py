"""Serial-mode master: queued work given to other launchers whose slots idle
(:class:`MasterShare`, a base of :class:`balsam.launcher.serial_master.Master`).

Several launchers on one campaign split its jobs by their first claims (each holds up to
``serial_prefetch_per_slot`` per slot), unequally; the recalls of
:mod:`balsam.launcher.serial_rebalance` move work only among one launcher's own workers. Near
the end a launcher whose own work ran out idled while another held work queued behind its
running tasks (issue 16, session 19: 4 x 256 nodes, the launchers holding the fewest jobs were
80-87% busy while work remained).

Every ``SHARE_SECONDS``, and at once after an empty claim, the master compares its open
workers' room with the work queued on them (in slots: nodes' worth x the slots of one node).
**Idle**: its last claim found nothing, it has nothing in hand, no claim in flight and no
recall out, and more slots are free than work is queued on its own workers: it writes that
number on its session row (:func:`balsam.core.idle_slots.publish`: 0 at once, a non-zero
number at most ``SHARE_SECONDS`` after the last write; a new non-zero number is notified).
**Surplus**: more work is queued on its workers (or in its hand) than its free slots take, and
either another launcher's publish was notified (heard on
:data:`balsam.defaults.IDLE_SLOTS_NOTIFY_CHANNEL`: given at the next loop turn, session 20; a
reconnection counts as one, as one sent meanwhile was lost) or its last claim found nothing
(then polled at most every ``GIVE_SECONDS``): it reads the other live sessions' idle slots
(:func:`balsam.core.idle_slots.wanted`) and gives back up to that many divided among the
launchers that are not idle, never more than its surplus: work in its hand is released at once,
queued work is recalled from the workers with the most queued (the ``recall`` of
:mod:`balsam.launcher.serial_rebalance`, ``fits`` a whole node). What a worker gives back has
never started; it is released and *not* claimed again here: a master that gave counts as one
whose last claim found nothing, and such a master claims only for its own free slots
(:meth:`MasterClaims._claim`), so only a launcher with room takes it -- the idle one, woken by
the release's notification. Nothing runs twice (a release never drops a RUNNING job's claim,
:func:`balsam.core.leases.release`); work moves only from queued behind running tasks to free
slots, so it cannot come back until the giver itself idles while the taker holds work queued. No
statement while claims find work and no launcher idles, but a master's first publish (0 too: the
row may hold a dead ensemble's number; session 20, s20-revtail).
"""
from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, Optional

from balsam.core import idle_slots
from balsam.defaults import IDLE_SLOTS_NOTIFY_CHANNEL as IDLE_CHANNEL
from balsam.errors import DatabaseUnavailable
from balsam.launcher.context import Context
from balsam.launcher.serial_rebalance import EPSILON, MasterRebalance

SHARE_SECONDS = 0.5
"""How often the master compares its room with its queued work (O(workers) each time)."""
GIVE_SECONDS = 1.0
"""A master with surplus reads the others' idle slots at most this often (one small SELECT):
a taker clears its number within ``SHARE_SECONDS`` of claiming, so a give is not repeated for
a want already met."""
UNTAKEN_SECONDS = 30.0
"""A master that claimed back work it gave (no idle launcher took it: their filters or tags
did not match it, or they ended) gives nothing for this long: else it released and claimed
its queued work again every second, one slot at a time."""
GIVEN_WITHIN_SECONDS = UNTAKEN_SECONDS + 2 * GIVE_SECONDS
"""A launcher whose own work ran out stays for work other launchers hold queued
(:func:`balsam.core.idle_slots.givable`) at most this long without being given any: a holder
that gives does so at once, or every ``GIVE_SECONDS``, or after ``UNTAKEN_SECONDS``; one that
does not (older code; a job queued behind a partly used node, which :meth:`_spare` counts only as
the node's overflow, e.g. 0.25 for a packing-1 job behind a packing-4 task) kept it idle until
that work started there (s20-revtail)."""


class MasterShare(MasterRebalance):
    """The master's idle slots and surplus across launchers (see the module docstring)."""

    ctx: Context
    queue: deque[Any]  # the master's claimed work not yet sent (TaskSpec)
    slots_per_node: int
    _giving: frozenset[int] = frozenset()
    """Workers asked to give work back for other launchers, not yet answered."""
    _heard = False
    """Another launcher published idle slots (notified) since this master last gave."""
    _reconnected = 0
    """The connection's reconnections seen: one is taken for a notification heard (one sent
    while the connection was away is lost, and the same number is never notified again)."""
    _published: Optional[int] = None
    """The idle slots last written on the session row (None: nothing yet; the row may hold
    what the master of an earlier ensemble of the session wrote before it died)."""
    given = 0
    """Jobs given back for other launchers so far."""
    _idle_from: Optional[float] = None
    """When this launcher's own work ran out and it began to wait to be given some (None: it
    ran something since; reset by the loop)."""
    _waited = False
    """The last look found such work (the give-up is logged once)."""
    _handed: frozenset[str] = frozenset()
    """The jobs of the last give (claimed back here: nobody took them)."""

    def _flush(self) -> None:
        raise NotImplementedError  # provided by Master: write the pending changes

    def _claiming(self) -> bool:
        raise NotImplementedError  # provided by MasterClaims: a claim in flight

    def _share(self, now: float) -> None:
        """Publish this launcher's idle slots, or give its surplus to idle launchers."""
        db = self.ctx.db
        if db.heard(IDLE_CHANNEL) or db.reconnects != self._reconnected:
            self._heard = True  # (a flag: the loop's naps collect notifications)
            self._reconnected = db.reconnects
            self._next["share"] = 0.0
        if now < self._next.get("share", 0.0):
            return
        self._next["share"] = now + SHARE_SECONDS
        if self._handed and self._took_back():
            self.ctx.log.info("no other launcher took the work given back: giving none for "
                              f"{UNTAKEN_SECONDS:.0f} s")
            self._handed = frozenset()
            self._next["untaken"] = now + UNTAKEN_SECONDS
        idle, surplus = self._spare()
        quiet = not (self._recalling or self._releasing or self._giving or self._claiming())
        self._publish(idle if quiet and self._drained and not self.queue else 0, now)
        if not quiet or now < self._next.get("untaken", 0.0):
            return
        if surplus < 1:
            self._heard = False
        elif self._heard or (self._drained and now >= self._next.get("give", 0.0)):
            self._heard = False
            self._next["give"] = now + GIVE_SECONDS
            self._offer(surplus)

    def _givable(self) -> int:
        """Work other live serial sessions hold queued that this launcher could be given
        (:func:`balsam.core.idle_slots.givable`, by its filters and the time it has left): it
        keeps the launcher from exiting for ``GIVEN_WITHIN_SECONDS`` after its work ran out, then
        no more (0)."""
        ctx, now = self.ctx, time.monotonic()
        if self._idle_from is None:
            self._idle_from = now
        if now - self._idle_from > GIVEN_WITHIN_SECONDS:
            if self._waited:  # (once)
                ctx.log.info("work queued in other launchers was not given in "
                             f"{GIVEN_WITHIN_SECONDS:g} s: not waiting for it")
                self._waited = False
            return 0
        count = ctx.db.try_run(idle_slots.givable, ctx.session_id, wf_filter=ctx.wf_filter,
                               tags=ctx.tags, gpus_per_node=ctx.gpus_per_node,
                               max_wall_minutes=ctx.max_wall_minutes())
        self._waited = count > 0
        return count

    def _took_back(self) -> bool:
        """Whether this master claimed again some of the work it last gave."""
        held = self._handed & (self.inflight.keys() | {spec.job_id for spec in self.queue})
        return bool(held)

    def _spare(self) -> tuple[int, int]:
        """(free slots beyond the work queued on this master's open workers, work queued on
        them beyond their free slots plus the work in its hand), in slots."""
        open_workers = [w for w in self.load if w not in self.closed]
        room = sum(1.0 - self.load[w] for w in open_workers if self.load[w] < 1.0)
        over = sum(self.load[w] - 1.0 for w in open_workers if self.load[w] > 1.0)
        net = (room - over) * self.slots_per_node
        return max(0, int(net + EPSILON)), max(0, int(-net + EPSILON)) + len(self.queue)

    def _publish(self, idle: int, now: float) -> None:
        """Write ``idle`` on the session row: 0 at once, a non-zero number at most
        ``SHARE_SECONDS`` after the last write (near the end every task end frees a slot, and an
        idle launcher given work runs out again: each was a write and a notification, ~2,000 a
        launcher in bench_scale's 4 x 64 nodes). A master's first publish is at once, and
        written even if the row says it already (0 too): the session's row outlives an ensemble
        that died (:mod:`balsam.launcher.ensemble_restart`), and a new master that took it for
        0 never cleared the dead one's number while busy (others gave it work every second)."""
        if idle == self._published:
            return
        if idle and now < self._next.get("publish", 0.0):
            return
        try:
            self.ctx.db.try_run(idle_slots.publish, self.ctx.session_id, idle,
                                fresh=self._published is None)
        except DatabaseUnavailable:
            return
        self._published = idle
        self._next["publish"] = now + SHARE_SECONDS

    def _offer(self, surplus: int) -> None:
        """Give up to ``surplus`` queued jobs to the other launchers' idle slots."""
        try:
            idle, holders = self.ctx.db.try_run(idle_slots.wanted, self.ctx.session_id)
        except DatabaseUnavailable:
            return
        if idle < 1:
            return
        count = min(surplus, -(-idle // holders))
        self._drained = True  # an idle launcher's claims found nothing: from now on this one
        self._handed = frozenset()  # claims only for its free slots, never the work it gives
        in_hand = [self.queue.pop().job_id for _ in range(min(count, len(self.queue)))]
        if in_hand:
            self._hand_over(in_hand)
        self._ask_back(count - len(in_hand))
        self.ctx.log.info(f"giving back up to {count} queued job(s): other launchers have "
                          f"{idle} idle slot(s)")

    def _ask_back(self, count: int) -> None:
        """Recall ``count`` slots' worth of queued work, from the workers with the most queued."""
        slots = self.slots_per_node
        over = sorted(((self.load[w] - 1.0, w) for w in self.load
                       if w not in self.closed and self.load[w] > 1.0 + EPSILON), reverse=True)
        asked = set()
        for worth, worker in over:
            take = min(count, int(worth * slots + EPSILON))
            if count < 1:
                break
            if take >= 1:
                self.channel.send(worker, {"recall": take / slots, "fits": 1.0})
                asked.add(worker)
                count -= take
        self._giving = frozenset(asked)
        self._recalling = self._recalling | self._giving

    def _recalled(self, worker: int, report: Mapping[str, Any]) -> None:
        """A worker's answer to a recall: for another launcher (released, not claimed again
        here), or for this one's idle workers (:class:`MasterRebalance`)."""
        if worker not in self._giving:
            super()._recalled(worker, report)
            return
        self._giving = self._giving - {worker}
        self._recalling = self._recalling - {worker}
        job_ids = list(report["recalled"])
        self._forget(worker, job_ids)
        if job_ids:
            self._hand_over(job_ids)

    def _hand_over(self, job_ids: Sequence[str]) -> None:
        """Release jobs never started, for another launcher's claim (written at once)."""
        for job_id in job_ids:
            self.status.release(job_id)
        self._flush()
        self.given += len(job_ids)
        self._handed = self._handed | frozenset(job_ids)
