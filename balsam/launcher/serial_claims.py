"""Serial-mode master's claiming side: what jobs rank 0 holds, and how it gets more.

:class:`MasterClaims` (a base of :class:`balsam.launcher.serial_master.Master`, which owns the
loop, the workers' reports, the dispatch to workers, the status writes, the processing pass and
stopping) claims serial jobs in batches sized to the open nodes' slots and to the task end rate
(``rate``, kept here by :meth:`MasterClaims._rate_tick`), either in the loop
(:class:`JobSource`) or, at scale (the status writer threads on), through ``CLAIMERS``
:class:`Claimer` threads with a connection each, a claim in flight each, that the loop asks and
later takes, never waiting on a claim; jobs a kill check released while their claim was in
flight are dropped from its answer. After a reconnection (or a claim whose commit reply was
lost) the holds the master does not know about are reconciled (:meth:`_check_reconnect`).
Claimers are closed at the end, their answers queued so that they are released with the rest.
"""
from __future__ import annotations

import math
from collections import deque
from typing import Callable, Union

from balsam.core.tunables import Tunables
from balsam.db.database import Database
from balsam.db.idle_poll import IdlePoll
from balsam.errors import DatabaseUnavailable
from balsam.launcher.context import Context
from balsam.launcher.job_source import Claimer, JobSource
from balsam.launcher.status_writers import StatusSink
from balsam.launcher.task import TaskSpec

CLAIMERS = 2
"""At scale (the status writer threads on), claims run in this many :class:`Claimer` threads,
a connection each, a claim in flight each (``SKIP LOCKED``: they never get the same job); the
master's loop asks and takes, never waiting on a claim."""
RATE_WINDOW_SECONDS = 0.25
RATE_RAMP_SECONDS = 0.02
"""Within a window, the rate so far counts once this much of it passed (it only raises ``rate``):
at start-up, short tasks' claims and worker queues grow within ~20 ms (was 50)."""
CLAIM_HORIZON_SECONDS = 1.0
"""At full speed the master holds about this many seconds of work (fewer, bigger claims)."""
MAX_CLAIM_BATCH = 4096
CLAIM_SLOTS_DIVISOR = 16
"""A big allocation claims up to 1/16 of its slots at once (at most ``MAX_CLAIM_BATCH``):
with claims of 256, 1,024 nodes x 64 slots needed ~1,000 claim transactions to fill (measured,
bench_scale.py: claims of 4,096 doubled the rate at N >= 1,024)."""
FREE_SLOTS_SECONDS = 0.02
"""A master whose claims found nothing and whose slots are full counts its free slots (over
every worker) at most this often: at 4,096 nodes one count took ~1 ms, at every loop turn."""


class MasterClaims:
    """The claims of one serial-mode master (see the module docstring); the loop
    (:class:`balsam.launcher.serial_master.Master`) sets these attributes up."""

    claimers: list[Claimer]
    slots_per_node: int
    """The most tasks of one node's worth seen in a claim (sizes the claims)."""
    rate: float
    """Task ends per second over the last ``RATE_WINDOW_SECONDS``."""
    _reconnects: int
    _lost_claim: bool                    # a claim's commit reply may have been lost
    _dropped: set[str]                   # released by a kill check while a claim ran
    _reclaim: int                        # recalled jobs to claim again (serial_rebalance)
    _drained: bool
    _answered_nothing: Callable[[int, float], bool]  # MasterRebalance: a worker kept its queue
    """The last claim's answer was empty: nothing was claimable for this launcher then (a claim
    in flight is a re-check, after ``idle_wait_seconds`` or another session's notification)."""
    # The loop's, read or touched here: what is held (queued, on workers), the open workers,
    # the ends counted since the last rate tick, and when to claim next (``_next["claim"]``).
    ctx: Context
    source: JobSource
    status: StatusSink
    t: Tunables
    queue: deque[TaskSpec]
    inflight: dict[str, int]
    load: dict[int, float]
    closed: set[int]
    _ended: int
    _next: dict[str, float]
    claim_poll: IdlePoll  # the gap after an empty claim, backing off while idle

    def _open_claimers(self) -> None:
        """Start the claim state; at scale (writer threads), the :class:`Claimer` threads."""
        self.slots_per_node = 1
        self.rate = 0.0
        self._reconnects = self.ctx.db.reconnects
        self._lost_claim = False
        self._dropped = set()
        self._drained = False
        self.claimers = []
        if getattr(self.status, "databases", None):  # at scale (writer threads): claims too
            db = self.ctx.db
            self.claimers = [Claimer(self.source, Database(
                db.db_path, f"{db.application_name}-claimer{k}", stop=db.stop,
                reconnect_max_seconds=db.reconnect_max_seconds, log=db.log))
                for k in range(CLAIMERS)]

    def _check_reconnect(self) -> None:
        db = self.ctx.db
        if db.reconnects == self._reconnects and not self._lost_claim:
            return
        if self._claiming():
            return  # once the claims are taken (their jobs are then known)
        known = set(self.inflight) | {s.job_id for s in self.queue} | self.status.pending_ids()
        try:
            timed_out, released = db.try_run(self.source.reconcile_in, known)
        except DatabaseUnavailable:
            return
        self._reconnects = db.reconnects
        self._lost_claim = False
        # Notifications sent while the connection was down are lost (and the released claims'
        # are our own): claim and process now, not at the backed-off next look.
        self._next["claim"] = self._next["advance"] = 0.0
        self.claim_poll.reset()
        if timed_out or released:
            self.ctx.log.warning(f"after reconnecting: {timed_out} unknown running job(s) timed "
                                 f"out, {released} unknown claim(s) released")

    def _claim(self, now: float) -> bool:
        took = self._take_claims(now)
        free = [c for c in self.claimers if not c.asked]
        if self.claimers and not free:
            return took
        open_nodes = len(self.load) - len(self.closed)
        held = len(self.queue) + len(self.inflight) + sum(c.asked for c in self.claimers)
        target = max(self.t.serial_prefetch_per_slot * self.slots_per_node * open_nodes,
                     int(self.rate * CLAIM_HORIZON_SECONDS))
        # Claim once the hold is half a batch below the target, at most a batch at a time.
        # (Capping the target at one batch beyond what is in flight, as before, stopped claims
        # for good once ~claim_batch tasks were in flight: 4,096 nodes ran 256 tasks.)
        batch = self._claim_batch(open_nodes)
        least = min(batch, target) // 2
        room = target - held
        if now < self._next["claim"]:
            return took
        if self._drained:  # nothing was claimable: only for its free slots, so that work
            # another launcher gives back goes to one with room (serial_share), not to a hoard
            room, least = self._free_slots() - sum(c.asked for c in self.claimers), 1
            if room < least and not self._reclaim:  # counted again soon, not at every
                # turn (O(workers) each)
                self._next["claim"] = max(self._next["claim"], now + FREE_SLOTS_SECONDS)
        if self._reclaim:  # work a worker gave back, released: claimed again at once
            room, least = max(room, self._reclaim), 1  # (serial_rebalance)
        if open_nodes <= 0 or room < least or now < self._next["claim"]:
            return took
        self._reclaim = 0
        if self.claimers:  # answered to a later :meth:`_take_claims`
            for claimer in free:
                if room < least:
                    break
                claimer.ask(min(batch, room), self.ctx.max_wall_minutes())
                room -= min(batch, room)
            return took
        specs: Union[list[TaskSpec], DatabaseUnavailable]
        try:
            specs = self.source.claim(min(batch, room), serial=True,
                                      max_nodes=1, max_wall_minutes=self.ctx.max_wall_minutes())
        except DatabaseUnavailable as exc:
            specs = exc
        return self._claimed(specs, now)

    def _free_slots(self) -> int:
        """Slots free on the open workers beyond the work in hand and the work queued on them
        that a recall could still move (the loads count every task by its share of a node,
        the launcher's own ones too; queued work its worker kept when asked, as not fitting
        the room there is, does not take that room: :meth:`_answered_nothing`)."""
        open_workers = [w for w in self.load if w not in self.closed]
        rooms = [1.0 - self.load[w] for w in open_workers if self.load[w] < 1.0]
        fits = max(rooms, default=0.0)
        over = sum(self.load[w] - 1.0 for w in open_workers
                   if self.load[w] > 1.0 and not self._answered_nothing(w, fits))
        net = (sum(rooms) - over) * self.slots_per_node - len(self.queue)
        return max(0, math.ceil(net - 1e-9))

    def _claiming(self) -> bool:
        """Whether a claimer's claim is in flight (or answered and not taken)."""
        return any(c.asked for c in self.claimers)

    def _take_claims(self, now: float) -> bool:
        """Take the claimers' answers, if any (True: specs were queued)."""
        took = False
        for claimer in self.claimers:
            specs = claimer.take()
            if specs is None:
                continue
            if isinstance(specs, DatabaseUnavailable):
                self._lost_claim = True
            elif self._dropped:  # killed while the claim ran: released already
                kept = [s for s in specs if s.job_id not in self._dropped]
                if specs and not kept:  # not "nothing to claim"
                    self._next["claim"] = 0.0
                    continue
                specs = kept
            took = self._claimed(specs, now) or took
        if self._dropped and not self._claiming():
            self._dropped.clear()
        return took

    def _claimed(self, specs: Union[list[TaskSpec], DatabaseUnavailable], now: float) -> bool:
        if isinstance(specs, DatabaseUnavailable):
            self._next["claim"] = now + 0.5
            return False
        self._drained = not specs
        if not specs:  # nothing runnable: ask again when notified, after processing, or later
            self._next["claim"] = now + self.claim_poll.empty()
            self._next["share"] = 0.0  # idle slots published now (serial_share)
            return False
        self._next["claim"] = 0.0
        self.queue.extend(specs)
        self.slots_per_node = max(self.slots_per_node, *(self._slots(s) for s in specs))
        return True

    def _claim_batch(self, open_nodes: int) -> int:
        """The claim size: ``claim_batch``, or more on a big allocation (a fraction of its
        slots, up to ``MAX_CLAIM_BATCH``), so filling N x S slots takes a few dozen claims."""
        slots = self.slots_per_node * open_nodes
        return max(self.t.claim_batch, min(MAX_CLAIM_BATCH, slots // CLAIM_SLOTS_DIVISOR))

    def _slots(self, spec: TaskSpec) -> int:
        per_node = max(1, spec.node_packing_count)
        return min(per_node, self.ctx.gpus_per_node) if self.ctx.gpus_per_node else per_node

    def _rate_tick(self, now: float) -> None:
        elapsed = now - self._next["rate"] + RATE_WINDOW_SECONDS
        if now >= self._next["rate"]:
            self.rate = self._ended / elapsed
            self._ended = 0
            self._next["rate"] = now + RATE_WINDOW_SECONDS
        elif elapsed >= RATE_RAMP_SECONDS:  # speeding up (start-up): claim big batches at once
            self.rate = max(self.rate, self._ended / elapsed)

    def _close_claimers(self) -> None:
        """End the claimers (after their claims in flight: released with the rest)."""
        for claimer in self.claimers:
            claimer.close()
            answer = claimer.take()
            if isinstance(answer, list):
                self.queue.extend(answer)
        self.claimers = []
