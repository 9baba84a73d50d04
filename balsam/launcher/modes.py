"""The one shape of a launcher mode: what :func:`balsam.launcher.main.run` calls.

:func:`balsam.launcher.main.run` builds the :class:`~balsam.launcher.context.Context`, picks the
mode for ``--job-mode`` (:func:`balsam.launcher.main.choose_mode`) and calls it in this order:
``prestart(ctx)`` before the launcher session opens (``ctx.session_id`` is 0), ``abandon(ctx)``
if the session could not be opened, else ``run(ctx)`` with the session open, whose return value
is the launcher's exit status. The modes:

* :class:`balsam.launcher.mpi_mode.MPILauncherMode`: one MPI launch per job on whole nodes,
  the loop of :class:`balsam.launcher.mpi_mode.MPIMode` in the launcher's process;
* :class:`balsam.launcher.serial_mode.SerialMode`: one MPI launch over the allocation running
  single-node tasks (the ranks: :mod:`balsam.launcher.serial_ranks`), started again by
  :mod:`balsam.launcher.ensemble_restart` if a rank dies.

**Where a job becomes RUNNING.** The two modes record it at different moments, on purpose:

* MPI mode records RUNNING *before* the task starts: the jobs that fit the idle nodes move to
  RUNNING in the same statement as the ends just reaped and the next claim
  (:func:`balsam.core.leases.cycle`, in ``MPIMode._transaction``), and only the jobs that moved
  are launched. Why: an MPI launch takes whole nodes and seconds to start, and launches are
  few (at most one per node at a time), so one statement before each launch costs nothing that
  matters, and a job a user killed or changed meanwhile is refused by the state writer and never
  launched -- nothing has to be stopped, and a crash between the write and the launch leaves a
  RUNNING job that the lease sweep times out (retried by the usual rules).
* Serial mode records RUNNING *after* the task started: the worker ranks start tasks from
  their node's queue at once and report the starts; rank 0, the only rank that talks to the
  database, writes them in batches (:class:`balsam.launcher.status.StatusBuffer`, from
  ``serial_master.Master``; the first node's first tasks, which the launcher starts itself
  while the ensemble boots, the launcher records the same way:
  :mod:`balsam.launcher.warm_start`). Why: its tasks are many and short (thousands a second
  over the allocation); a database round trip through rank 0 before each start would put the
  database's latency on every task and idle the cores while it waits. The price is paid
  elsewhere: a start whose RUNNING is refused (a user killed the job meanwhile) is stopped at
  once and its run is written into the history in the same transaction, dated when the start
  was noted (:mod:`balsam.core.killed_starts`), and starts never written because the ensemble
  died are recorded late from the worker watchdogs' reports
  (:func:`balsam.core.leases.record_lost_starts`).

Either way every run has its RUNNING event before its end event.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from balsam.launcher.context import Context


class LauncherMode(Protocol):
    """A launcher mode (see the module docstring for the calling order and the RUNNING rule).

    ``run`` must: call ``ctx.started()`` once its tasks can start (that starts the transition
    workers); stop its tasks and record them when ``ctx.should_stop()`` turns true; register
    the process groups it starts with ``ctx.watchdog`` (creating it if None); set
    ``ctx.exit_reason`` (``"session lost"`` when the session was swept) or leave
    ``ctx.stop_reason`` to say why it ended; set ``ctx.release_session`` False if its tasks
    are not known to be dead. It returns 0 after a normal end, 1 when the session was lost,
    2 when the mode itself failed (serial: the MPI launch)."""

    def prestart(self, ctx: Context) -> None:
        """Start what can overlap opening the session (``ctx.session_id`` is 0); keep it in
        ``ctx.prestarted``. Nothing may be claimed or run yet."""

    def abandon(self, ctx: Context) -> None:
        """The session could not be opened: undo :meth:`prestart` (nothing was claimed)."""

    def run(self, ctx: Context) -> int:
        """Run the mode for the open session of ``ctx``; the launcher's exit status."""
