"""A launcher's tasks never outlive its lease: the lease floor and the self-fence.

Another launcher may run a job again once the session holding it was swept (its lease expired,
:func:`balsam.core.leases.sweep`). Two things keep the first run from still going then:

* **The lease floor** (:func:`effective_lease`). A launcher killed outright last renewed its
  lease up to one heartbeat before it died, and its watchdog then needs :func:`kill_bound` to
  stop its tasks (serial mode: the ensemble gets SIGTERM, SIGKILL after the shutdown grace plus
  ``FORCE_KILL_AFTER_SECONDS``, then the worker ranks' watchdogs their kill grace; MPI mode:
  its tasks get the kill grace). A lease shorter than a heartbeat plus that bound plus
  :data:`FENCE_MARGIN_SECONDS` lets a task that ignores SIGTERM outlive it; the floor adds two
  heartbeats more, which a live launcher may miss (a long transaction in flight, a loaded
  machine) before it fences itself. The session is opened with a shorter lease raised to that
  floor (one log line).
* **The self-fence** (:class:`LeaseFence`). A launcher whose connection is lost or hangs (a
  blocked socket: the statement never returns) could keep its tasks running while other
  launchers sweep its session and run their jobs again. Counted on its own monotonic clock from
  the moment the last *confirmed* renewal was sent (the server's ``now()`` came later, so the
  lease expires no sooner than that plus the lease), it stops its tasks once
  :func:`fence_after` passed: the lease less the time its tasks need to die (SIGTERM, the kill
  grace, SIGKILL) less the margin. A thread of its own decides, so a main loop blocked in a
  statement cannot delay it; the thread then also shuts the connection's socket down
  (:meth:`balsam.db.database.Database.sever`), so that the blocked statement fails and the
  launcher goes the way of a lost session: it records nothing and exits with status 1.

MPI mode has this fence (the launcher renews its own lease). Serial mode's lease is renewed by
the ensemble's master and watched by the launcher (:mod:`balsam.launcher.ensemble_stuck`),
which kills a master's ensemble by :func:`fence_after` too, through its own connection; if
that connection hangs too, the launcher's own fence (:func:`start_serial_fence`, armed when
the ensemble starts and fed by its confirmed looks at the lease) kills the ensemble and its
own tasks and ends the launcher. Once the ensemble ended, the launcher's own (warm-start) tasks
that outlived it are fenced while it waits for them, renewing the lease itself
(:func:`start_own_tasks_fence`). What is left uncovered is in docs/architecture.md, "Fencing".
"""
from __future__ import annotations

import math
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Callable, Optional

from balsam.core.tunables import Tunables
from balsam.launcher.group_stop import confirm_starts
from balsam.launcher.watchdog import kill_groups

if TYPE_CHECKING:
    from balsam.launcher.context import Context

FORCE_KILL_AFTER_SECONDS = 9.0
"""After forwarding a stop, the serial-mode launcher SIGKILLs the MPI launch if it is still
running after the tasks' shutdown grace plus this long (all ranks are gone within 15 s of the
signal); its watchdog does the same if it was killed (:mod:`balsam.launcher.serial_mode`)."""
FENCE_MARGIN_SECONDS = 2.0
"""Slack for what the bounds leave out: a loaded machine's scheduling delays, the watchdog's
read nap, the time a sweep's statement takes to reach the server."""
POLL_SECONDS = 1.0
"""The fence's thread looks at least this often, so that it sees when it was stopped."""
SUSPENDED_SECONDS = 5.0
"""A look this much later than asked for means the process was stopped (a job suspended with
``scontrol suspend``, SIGSTOP, a paused VM), not just slow."""
CONFIRM_SECONDS = 3.0
"""How long the fence waits for its own renewal after such a stop (:func:`session_renewer`)."""


def kill_bound(tunables: Tunables, job_mode: str) -> float:
    """Seconds from a launcher's death until its watchdogs have stopped every task of it."""
    if job_mode == "serial":
        return (tunables.shutdown_grace_seconds + FORCE_KILL_AFTER_SECONDS
                + tunables.kill_grace_seconds)
    return tunables.kill_grace_seconds


def lease_floor(tunables: Tunables, job_mode: str) -> int:
    """The shortest safe lease (whole seconds): 3 heartbeats, :func:`kill_bound`, the margin."""
    return math.ceil(3.0 * tunables.heartbeat_seconds + kill_bound(tunables, job_mode)
                     + FENCE_MARGIN_SECONDS)


def effective_lease(tunables: Tunables, job_mode: str) -> tuple[Tunables, str]:
    """(``tunables`` with the lease raised to :func:`lease_floor` if it is shorter, the one
    log line saying why -- "" when the lease is kept)."""
    floor = lease_floor(tunables, job_mode)
    if tunables.lease_seconds >= floor:
        return tunables, ""
    why = (f"lease_seconds {tunables.lease_seconds} raised to {floor}: a killed {job_mode}-mode "
           f"launcher's tasks may live {kill_bound(tunables, job_mode):g} s after it died, a "
           f"heartbeat after its last renewal, and a live one may miss 2 heartbeats before it "
           f"stops them (heartbeat {tunables.heartbeat_seconds:g} s, margin "
           f"{FENCE_MARGIN_SECONDS:g} s): a shorter lease lets a retry run beside them")
    return tunables.replace(lease_seconds=floor), why


def fence_after(tunables: Tunables) -> float:
    """Seconds after sending its last confirmed renewal at which a launcher stops its tasks."""
    return tunables.lease_seconds - tunables.kill_grace_seconds - FENCE_MARGIN_SECONDS


def stuck_after(tunables: Tunables) -> float:
    """Seconds without a lease renewal after which an ensemble's master is stuck
    (:mod:`balsam.launcher.ensemble_stuck`; here, beside the fence's rule, because worker ranks
    read it too, :mod:`balsam.launcher.rank_heartbeat`, and need none of the lease SQL)."""
    return max(tunables.lease_seconds / 2.0,
               tunables.reconnect_max_seconds + 2.0 * tunables.heartbeat_seconds)


class LeaseFence:
    """Calls ``on_expiry`` once, on a thread of its own, if no renewal was confirmed for
    ``after`` seconds (see the module docstring). :meth:`renewed` moves the deadline;
    :attr:`fired` tells the main loop to stop as after a lost session."""

    def __init__(self, after: float, sent_at: float, on_expiry: Callable[[float], None],
                 confirm: Optional[Callable[[], Optional[float]]] = None) -> None:
        self.after = after
        self.confirmed_at = sent_at
        self._on_expiry = on_expiry
        self._confirm = confirm
        """Called (on the fence's thread) when the time ran out while the process was stopped
        (a suspended job: its tasks were stopped too, so none ran beside a rerun): renews the
        lease on a connection of its own, within :data:`CONFIRM_SECONDS`; the renewal's send
        time if the session was still open -- no sweep ended it, so no job of it runs
        elsewhere, and the fence goes on counting from there --, else None (it fires)."""
        self._changed = threading.Condition()
        self._closed = False
        self._fired = threading.Event()
        self._thread: Optional[threading.Thread] = None

    @property
    def fired(self) -> bool:
        """The fence stopped (or is stopping) the tasks: the session must be given up."""
        return self._fired.is_set()

    def renewed(self, sent_at: float) -> None:
        """A renewal sent at ``sent_at`` (``time.monotonic()``) was confirmed."""
        with self._changed:
            self.confirmed_at = max(self.confirmed_at, sent_at)

    def start(self) -> None:
        """Start the fence's thread (a daemon: it never keeps a launcher up)."""
        self._thread = threading.Thread(target=self._watch, name="lease-fence", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop watching (the launcher is exiting); waits for ``on_expiry`` if it runs."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def _watch(self) -> None:
        # The process was stopped since the last confirmed renewal -- or the fence was armed
        # past its time (a launcher busy between two ensembles: a stuck one killed, its reports
        # awaited, its jobs recovered, while nobody confirmed a renewal): ask before firing.
        stopped = time.monotonic() >= self.confirmed_at + self.after
        with self._changed:
            while not self._closed:
                now = time.monotonic()
                left = self.confirmed_at + self.after - now
                if left <= 0:
                    if not (stopped and self._confirm is not None):
                        break
                    self._changed.release()  # the renewal may take seconds: renewed() waits not
                    try:
                        sent = self._confirm()
                    finally:
                        self._changed.acquire()
                    if sent is None:
                        break
                    self.confirmed_at, stopped = max(self.confirmed_at, sent), False
                    continue
                asked = min(left, POLL_SECONDS)
                self._changed.wait(asked)
                if time.monotonic() - now - asked > SUSPENDED_SECONDS:
                    stopped = True
            if self._closed:
                return
            self._fired.set()
            unconfirmed = time.monotonic() - self.confirmed_at
        self._on_expiry(unconfirmed)


def session_renewer(ctx: Context) -> Callable[[], Optional[float]]:
    """A :class:`LeaseFence` ``confirm`` for ``ctx``'s session: renews its lease
    (:func:`balsam.core.leases.heartbeat`: only if no sweep closed it) on a connection of its own,
    on a thread of its own so that a connection or statement that hangs costs at most
    :data:`CONFIRM_SECONDS`; the monotonic time the renewal was sent if it was confirmed in
    time, else None."""

    def confirm() -> Optional[float]:
        from balsam.core import leases
        from balsam.db.database import Database

        sent = time.monotonic()
        answer: list[bool] = []

        def renew() -> None:
            db = Database(ctx.db_path, "balsam-lease-fence", reconnect_max_seconds=CONFIRM_SECONDS)
            try:
                answer.append(db.run_before(sent + CONFIRM_SECONDS, leases.heartbeat,
                                            ctx.session_id))
            except Exception:  # unreachable, refused, a bug: not confirmed, the fence fires
                answer.append(False)
            finally:
                db.close()

        thread = threading.Thread(target=renew, name="lease-fence-renewal", daemon=True)
        thread.start()
        thread.join(CONFIRM_SECONDS)
        confirmed = bool(answer and answer[0]) and not thread.is_alive()
        ctx.log.warning("the launcher was stopped (a suspended job?) past its fence's time: "
                        + ("its lease was renewed, its session still open: going on" if confirmed
                           else "its lease could not be renewed: stopping its tasks"))
        return sent if confirmed else None

    return confirm


def start_fence(ctx: Context) -> LeaseFence:
    """A started :class:`LeaseFence` for ``ctx``'s session, counting from its opening, whose
    expiry stops every task registered with ``ctx.watchdog`` (SIGTERM, the kill grace, SIGKILL)
    and then severs ``ctx.db``'s connection (a statement hung on it fails)."""

    def stop_tasks(unconfirmed: float) -> None:
        # On the fence's thread: the main loop may be blocked in a statement.
        # (a copy: the loop thread may reap and remove meanwhile; the bounds of the leaders'
        # start times keep a group reaped meanwhile, its id taken since, from being signalled)
        starts = confirm_starts(dict(ctx.watchdog.registered) if ctx.watchdog else {})
        ctx.log.error(f"no renewal of the lease confirmed for {unconfirmed:.1f} s (lease "
                      f"{ctx.tunables.lease_seconds} s): stopping {len(starts)} task(s) before "
                      "it could expire and another launcher run their jobs again")
        kill_groups(list(starts), ctx.tunables.kill_grace_seconds, starts=starts)
        ctx.db.sever()

    fence = LeaseFence(fence_after(ctx.tunables), ctx.opened_at, stop_tasks,
                       confirm=session_renewer(ctx))
    fence.start()
    return fence


def start_serial_fence(ctx: Context, pgid: int, expires_after: float) -> LeaseFence:
    """A started :class:`LeaseFence` for a serial-mode launcher whose ensemble's process group
    is ``pgid``, counting from ``expires_after`` (a ``time.monotonic()`` time no later than the
    one from which the lease still runs a whole ``lease_seconds``: a confirmed lease-age read's
    send time less the age it read; :class:`balsam.launcher.ensemble_stuck.StuckWatch` moves it
    on with each). On expiry, while the ensemble has not been reaped (once it is, the launcher's
    loop is past it: nothing is done), it SIGKILLs the ensemble (its worker ranks' watchdogs
    then stop their tasks within the kill grace), stops the launcher's own tasks (every other
    group registered with ``ctx.watchdog``: SIGTERM, the kill grace, SIGKILL) and ends the
    process at once with status 1, as a killed launcher would end: nothing recorded, the
    session left to a sweep (the loop may hang in a statement, and any statement after this
    point could record a state or renew the lease)."""
    import os
    import signal

    from balsam.platform.process import start_time
    from balsam.platform.procgroup import signal_group

    leader = start_time(pgid)  # our unreaped child now: names it even once its pid is reused

    def stop_all(unconfirmed: float) -> None:
        if leader is not None and start_time(pgid) != leader:
            return  # reaped (a zombie counts: the loop that reaps it has not returned)
        try:
            os.kill(pgid, 0)
        except ProcessLookupError:
            return
        bounds = dict(ctx.watchdog.registered) if ctx.watchdog is not None else {}
        starts = confirm_starts({g: b for g, b in bounds.items() if g != pgid})
        ctx.log.error(f"no lease age confirmed for {unconfirmed:.1f} s (lease "
                      f"{ctx.tunables.lease_seconds} s): killing the serial-mode ensemble and "
                      f"stopping {len(starts)} task(s) of the launcher before the lease could "
                      "expire and another launcher run their jobs again; exiting (status 1), "
                      "the session is left to a sweep")
        signal_group(pgid, signal.SIGKILL, leader)
        kill_groups(list(starts), ctx.tunables.kill_grace_seconds, starts=starts)
        for handler in ctx.log.handlers:
            handler.flush()
        os._exit(1)

    fence = LeaseFence(fence_after(ctx.tunables), expires_after, stop_all,
                       confirm=session_renewer(ctx))
    fence.start()
    return fence


def start_own_tasks_fence(ctx: Context, starts: Mapping[int, Optional[int]]) -> LeaseFence:
    """A started :class:`LeaseFence` for a serial-mode launcher waiting for its own tasks
    after its ensemble ended (:meth:`balsam.launcher.warm_start.WarmStart.drain`: nobody but
    the launcher renews the lease then, from its loop, which a hung statement blocks), counting
    from the lease's last confirmed renewal (``ctx.lease_since``, the session's opening at the
    earliest); the caller moves it with :meth:`LeaseFence.renewed` for each renewal confirmed.
    ``starts`` maps the tasks' process groups to their leaders' start times (read while they
    were the launcher's unreaped children: a group whose id was reused is left alone). On
    expiry it stops them (SIGTERM, the kill grace, SIGKILL) and ends the process at once with
    status 1, as :func:`start_serial_fence` does: nothing recorded, the session left to a
    sweep."""
    import os

    def stop_own(unconfirmed: float) -> None:
        ctx.log.error(f"no renewal of the lease confirmed for {unconfirmed:.1f} s (lease "
                      f"{ctx.tunables.lease_seconds} s) while the launcher waits for its own "
                      f"tasks: stopping the launcher's own task(s) before the lease could "
                      "expire and another launcher run their jobs again; exiting (status 1), "
                      "the session is left to a sweep")
        kill_groups(list(starts), ctx.tunables.kill_grace_seconds, starts=starts)
        for handler in ctx.log.handlers:
            handler.flush()
        os._exit(1)

    fence = LeaseFence(fence_after(ctx.tunables), max(ctx.opened_at, ctx.lease_since), stop_own,
                       confirm=session_renewer(ctx))
    fence.start()
    return fence
