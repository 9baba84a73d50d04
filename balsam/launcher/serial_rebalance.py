"""Serial-mode master: work taken back from a node whose queue does not move, for a node that
idles (:class:`MasterRebalance`, a base of :class:`balsam.launcher.serial_master.Master`).

The master queues work on a worker behind what runs there (:mod:`balsam.launcher.serial_dispatch`:
a node's worth, more while tasks end fast), so that a worker never waits for the master. When the
tasks running there are long -- the launcher's own warm-start tasks, a campaign's hour-long jobs
beside short ones -- that queue waits behind them while another node, its own work done, idles:
at a campaign's end its last jobs sat for as long as the longest task ran (a test saw 3 jobs wait
4 minutes behind the launcher's own tasks on node 1 while node 2 had nothing to run).

Every ``REBALANCE_SECONDS``, when the master has nothing queued and no claim in flight that
could bring work (a re-check after an empty answer does not count: beside other launchers each
of their writes starts one, and the check ran only between them), it compares the workers' loads
(running + queued, in nodes' worth): a worker with more than a node's worth has work waiting; an
open worker with less than a node's worth has room. A worker seen with work waiting at two
checks in a row, while room was seen both times, is asked to give back queued work worth up to
the room, each task no bigger than the most one node has free (``recall``, ``fits``: from its
queue's tail, then starts chained behind running tasks that have not begun; a task that has
begun runs on where it is). It answers with ``recalled`` [ids] (possibly none; a GPU task counts
as the master counts it): the master releases their claims and claims once the release is
committed (at scale a writer thread's commit, which a claimer's claim must follow to see the
jobs), at least as many jobs as came back whatever it holds, and the work goes to the least
loaded workers first -- the idle ones. Nothing is run twice: only a task the worker reports as
never started is released, and a release drops the claim only of a job that is not RUNNING
(:func:`balsam.core.leases.release`).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from balsam.launcher.status_writers import StatusSink

REBALANCE_SECONDS = 0.5
"""How often the master compares its workers' loads (O(workers) each time)."""
EPSILON = 1e-9


class MasterRebalance:
    """The master's recalls of waiting work (see the module docstring); the loop
    (:class:`balsam.launcher.serial_master.Master`) sets the attributes it reads up."""

    channel: Any  # the master's MasterChannel
    queue: Sequence[Any]
    inflight: dict[str, int]
    weight: dict[str, float]
    load: dict[int, float]
    closed: set[int]
    kill_sent: set[str]
    status: StatusSink
    _next: dict[str, float]

    _waiting: frozenset[int] = frozenset()
    """Workers seen with work waiting (more than a node's worth) while room was seen elsewhere."""
    _recalling: frozenset[int] = frozenset()
    """Workers asked to give work back, not yet answered."""
    _releasing: frozenset[str] = frozenset()
    """Recalled jobs whose release is not committed yet (a status writer thread's): a claim
    made before the commit (a claimer thread's) cannot see them; one follows it."""
    _reclaim = 0
    """How many jobs the next claim takes at least (those given back: claimed again at once,
    whatever the master holds, :meth:`balsam.launcher.serial_claims.MasterClaims._claim`)."""
    _drained = False
    """The last claim came back empty (:class:`balsam.launcher.serial_claims.MasterClaims`)."""
    _asked: dict[int, float]
    """The ``fits`` each worker was last asked with."""
    _fruitless: dict[int, tuple[float, float]]
    """Workers that gave nothing back: their load then and the ``fits`` they were asked for.
    Not asked again until their load changes or more room opens on one node (a task no idle
    node fits was asked for again every second, a release and a claim for nothing)."""

    def _claiming(self) -> bool:
        raise NotImplementedError  # provided by MasterClaims

    def _release_recalled(self, job_ids: Sequence[str]) -> None:
        raise NotImplementedError  # provided by Master: release, write, claim at once

    def _rebalance(self, now: float) -> None:
        """Ask workers whose queued work has waited behind their running tasks for it back,
        when other workers have room and the master has nothing else to give them."""
        if self._releasing and not self._claiming() \
                and self._releasing.isdisjoint(self.status.pending_ids()):
            self._reclaim += len(self._releasing)  # committed, and no claim from before
            self._releasing = frozenset()          # the commit is in flight: claim now
            self._next["claim"] = 0.0
        if now < self._next.get("rebalance", 0.0):
            return
        self._next["rebalance"] = now + REBALANCE_SECONDS
        claiming = self._claiming() and not self._drained  # (a re-check brings nothing new)
        if self.queue or claiming or self._recalling or self._releasing:
            self._waiting = frozenset()
            return
        open_workers = [w for w in self.load if w not in self.closed]
        rooms = [1.0 - self.load[w] for w in open_workers if self.load[w] < 1.0 - EPSILON]
        room = sum(rooms)
        over = {w: self.load[w] - 1.0 for w in open_workers if self.load[w] > 1.0 + EPSILON}
        if room <= EPSILON or not over:
            self._waiting = frozenset()
            return
        asked = set()
        fits = max(rooms)  # the most one node has free
        for worker in sorted(self._waiting & over.keys(), key=over.__getitem__, reverse=True):
            if room <= EPSILON:
                break
            if self._answered_nothing(worker, fits):
                continue
            worth = min(room, over[worker])
            self.channel.send(worker, {"recall": worth, "fits": fits})
            self._asked[worker] = fits
            asked.add(worker)
            room -= worth
        self._recalling = frozenset(asked)
        self._waiting = frozenset(over.keys() - asked)

    def _recalled(self, worker: int, report: Mapping[str, Any]) -> None:
        """A worker's answer to ``recall``: the queued tasks it gave back (never started)."""
        self._recalling = self._recalling - {worker}
        job_ids = list(report["recalled"])
        if job_ids:
            self._fruitless.pop(worker, None)
        elif worker in self._asked:
            self._fruitless[worker] = (self.load[worker], self._asked[worker])
        self._forget(worker, job_ids)
        if job_ids:
            self._release_recalled(job_ids)

    def _forget(self, worker: int, job_ids: Sequence[str]) -> None:
        """Jobs ``worker`` gave back: its share, as an end would (not counted as one: no rate)."""
        for job_id in job_ids:
            if self.inflight.pop(job_id, None) is not None:
                self.load[worker] -= self.weight.pop(job_id, 0.0)
            self.kill_sent.discard(job_id)

    def _answered_nothing(self, worker: int, fits: float) -> bool:
        """Whether ``worker`` gave nothing back when last asked, and nothing has changed that
        could make its answer different (its load, or a node with more room than then)."""
        last = self._fruitless.get(worker)
        if last is None:
            return False
        load, asked_fits = last
        if abs(self.load[worker] - load) > EPSILON or fits > asked_fits + EPSILON:
            del self._fruitless[worker]
            return False
        return True
