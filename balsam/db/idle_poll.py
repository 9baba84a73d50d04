"""The fallback look of a loop that waits on database notifications, backing off while idle.

A launcher's master, its MPI-mode loop, its transition workers and its transfer worker sleep
until another session notifies them (:meth:`balsam.db.database.Database.wait`): new runnable
jobs, kills, parents finishing and transfers to do change job rows, which notify; an app's
scripts changed (migration 0025) and stage-in items done for a worker's step notify too, and a
retry's back-off running out (of a job: ``transitions.PassResult.retry_in``; of a transfer
item: ``TransferStep.retry_due``) caps the wait at its moment (session 21). They also look on
their own now and then, for what nothing announces (a lost notification, a bug's safety
net). :class:`IdlePoll` spaces those looks: the first
``first`` seconds after a look that found nothing, then twice as long after each further empty
look, up to ``longest``; a notification or work found brings it back to ``first``. An idle
launcher then costs the shared server a transaction every few seconds per part, not several a
second (issue 16, session 20); its reaction to notified work does not change.
"""
from __future__ import annotations


class IdlePoll:
    """The gap before a loop's next look of its own (see the module docstring)."""

    def __init__(self, first: float, longest: float) -> None:
        self.first = first
        self.longest = max(first, longest)
        self._gap = first

    def empty(self) -> float:
        """A look found nothing: the gap until the next one (then the gap doubles)."""
        gap = self._gap
        self._gap = min(self._gap * 2.0, self.longest)
        return gap

    def reset(self) -> None:
        """Work was found or notified: the next empty look is followed by ``first`` again."""
        self._gap = self.first

    @property
    def backed_off(self) -> bool:
        """Whether the gap grew beyond ``first`` (the loop has been idle a while)."""
        return self._gap > self.first
