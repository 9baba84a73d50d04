"""State changes written by K threads, each with its own connection, sharded by job id.

One serial master at scale is held back by its one connection, not by its Python: the server
process executes the master's statements one after another and the master waits for each
commit (docs/architecture.md, "Scale of the serial master"). :class:`StatusWriters` takes what
a :class:`balsam.launcher.status.StatusBuffer` takes (``started``/``done``/``error``/
``timeout``/``release``) and hands each job's changes to shard ``job id mod K``: a writer thread
with its own :class:`balsam.db.database.Database` and its own ``StatusBuffer``. The master goes
on serving workers while the K writers' server processes work in parallel (psycopg2 releases
the GIL while a statement runs).

What holds, as with one buffer:

* **Order per job.** All changes of one job go to one shard, whose buffer writes them in the
  order noted (a start before its end; one batch is one transaction).
* **Every state recorded, commits synchronous.** A change counts as written only once its
  writer's transaction committed; until then it is ``pending`` (and its id in
  :meth:`pending_ids`, so a reconnection's reconciliation keeps its hold). A writer whose
  database is unreachable keeps its batch and tries again; a batch written twice changes
  nothing (:meth:`StatusBuffer.write`).
* **Refused starts.** A start whose RUNNING was refused (a user killed the job first) comes
  back from :meth:`flush` in ``not_started``, as from one buffer, for the master to stop it;
  its writer recorded the run in the transaction that found the refusal, dated when the
  master noted the start (:mod:`balsam.core.killed_starts`).
* **Never run twice.** Claims, kills and releases of the whole session stay on the master's
  connection; a writer only moves jobs its session holds, from the expected states
  (:func:`balsam.core.launcher_moves.move`).

:meth:`flush` does not wait (it asks every writer to write what it has now and returns the
refused starts reported so far); ``flush(before=deadline)`` waits until everything noted is
committed or the deadline passed (stopping). :meth:`close` writes what is left and ends the
threads.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Callable, Optional, Protocol

from balsam.core import launcher_moves, payloads
from balsam.db.database import Database
from balsam.errors import DatabaseUnavailable
from balsam.launcher.status import Batch, StatusBuffer, Written
from balsam.processing import transitions

NODES_PER_WRITER = 512
"""With ``launcher: status_writers: 0`` (auto), one writer per this many nodes, at most
``MAX_AUTO_WRITERS``; fewer than 2 writes on the master's own connection (no thread)."""
MAX_AUTO_WRITERS = 4
RETRY_SECONDS = 0.05
"""A writer whose database is unreachable tries again after this long (the connection's own
back-off decides when a reconnection is attempted)."""


class StatusSink(Protocol):
    """What the serial master needs of its status writer: one :class:`StatusBuffer`, or
    :class:`StatusWriters`."""

    flush_seconds: float

    def started(self, ids: Iterable[str]) -> None: ...

    def done(self, job_id: str) -> None: ...

    def error(self, job_id: str, message: str) -> None: ...

    def timeout(self, job_id: str, message: str) -> None: ...

    def release(self, job_id: str) -> None: ...

    def pyfunc_outcomes(self, rows: Iterable[payloads.OutcomeRow]) -> None: ...

    @property
    def pending(self) -> int: ...

    def pending_ids(self) -> set[str]: ...

    def due(self) -> bool: ...

    def flush(self, *, before: Optional[float] = None) -> Optional[Written]: ...


def shard_of(job_id: str, shards: int) -> int:
    """The shard of ``job_id`` (a UUID string): its low 64 bits mod ``shards``, the same in
    every process (not Python's salted ``hash``). Read from the text's last two groups when it
    is in the canonical form (as the database gives ids): parsing a ``uuid.UUID`` per call was
    ~11% of the master's CPU at scale (two calls per task)."""
    if len(job_id) == 36 and job_id[23] == "-":
        return int(job_id[19:23] + job_id[24:], 16) % shards
    import uuid  # (here: its import, with `platform`, is ~2 ms of every master's start)

    return (uuid.UUID(job_id).int & 0xFFFF_FFFF_FFFF_FFFF) % shards


class _Shard:
    """One writer: a buffer, its connection, its thread; ``lock`` guards the buffer and
    ``writing`` (the batch being written, still pending)."""

    def __init__(self, buffer: StatusBuffer) -> None:
        self.buffer = buffer
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.urgent = False
        self.writing: Optional[Batch] = None
        self.pid = 0
        self.refused: list[str] = []
        self.thread: Optional[threading.Thread] = None


class StatusWriters:
    """K writer threads with a connection each, sharded by job id (see the module docstring).

    ``connect(k)`` returns the k-th writer's :class:`Database` (its own connection);
    ``follow`` and ``start_message`` are as for :class:`StatusBuffer`. ``close`` when done.
    """

    def __init__(self, connect: Callable[[int], Database], session_id: int, writers: int,
                 flush_seconds: float, start_message: str = "",
                 follow: Optional[launcher_moves.FollowOn] = None,
                 owner: Optional[Database] = None) -> None:
        if writers < 1:
            raise ValueError(f"status writers must be >= 1, not {writers}")
        self.flush_seconds = flush_seconds
        self.owner = owner
        """The master's connection: the writers' server processes are its ``peer_pids`` (their
        commits must not wake it as another session's job changes would)."""
        self.shards = [_Shard(StatusBuffer(connect(k), session_id, flush_seconds,
                                           start_message=start_message, follow=follow))
                       for k in range(writers)]
        self._closing = False
        for k, shard in enumerate(self.shards):
            shard.thread = threading.Thread(target=self._serve, args=(shard,), daemon=True,
                                            name=f"balsam-status-writer-{k}")
            shard.thread.start()

    @property
    def databases(self) -> list[Database]:
        """The writers' connections (their statement counts, their server processes)."""
        return [s.buffer.db for s in self.shards]

    # ---- noting (the master's thread) -------------------------------------------------------
    def _shard(self, job_id: str) -> _Shard:
        return self.shards[shard_of(job_id, len(self.shards))]

    def started(self, ids: Iterable[str]) -> None:
        by_shard: dict[int, list[str]] = {}
        for job_id in ids:
            by_shard.setdefault(shard_of(job_id, len(self.shards)), []).append(job_id)
        for k, part in by_shard.items():
            shard = self.shards[k]
            with shard.lock:
                shard.buffer.started(part)

    def done(self, job_id: str) -> None:
        shard = self._shard(job_id)
        with shard.lock:
            shard.buffer.done(job_id)

    def error(self, job_id: str, message: str) -> None:
        shard = self._shard(job_id)
        with shard.lock:
            shard.buffer.error(job_id, message)

    def timeout(self, job_id: str, message: str) -> None:
        shard = self._shard(job_id)
        with shard.lock:
            shard.buffer.timeout(job_id, message)

    def release(self, job_id: str) -> None:
        shard = self._shard(job_id)
        with shard.lock:
            shard.buffer.release(job_id)

    def pyfunc_outcomes(self, rows: Iterable[payloads.OutcomeRow]) -> None:
        """Function-task outcomes, each to its job's writer (the master notes an outcome before
        its job's end, so it is written with the end or before it, never after)."""
        by_shard: dict[int, list[payloads.OutcomeRow]] = {}
        for row in rows:
            by_shard.setdefault(shard_of(row[0], len(self.shards)), []).append(row)
        for k, part in by_shard.items():
            shard = self.shards[k]
            with shard.lock:
                shard.buffer.pyfunc_outcomes(part)

    # ---- state ------------------------------------------------------------------------------
    @property
    def pending(self) -> int:
        """Items noted and not yet committed (being written included)."""
        total = 0
        for shard in self.shards:
            with shard.lock:
                total += shard.buffer.pending + len(shard.writing or ())
        return total

    def pending_ids(self) -> set[str]:
        """Ids with a change not yet committed (their jobs still count as this launcher's)."""
        ids: set[str] = set()
        for shard in self.shards:
            with shard.lock:
                ids |= shard.buffer.pending_ids()
                if shard.writing is not None:
                    b = shard.writing
                    ids |= (set(b.started) | set(b.done) | set(b.errors) | set(b.timeouts)
                            | set(b.release))
        return ids

    def due(self) -> bool:
        """Refused starts are waiting to be collected by :meth:`flush` (the writers write on
        their own schedule)."""
        return any(s.refused for s in self.shards)

    def flush(self, *, before: Optional[float] = None) -> Optional[Written]:
        """Ask every writer to write now; return the refused starts reported since the last
        call (``not_started``). With ``before`` (a ``time.monotonic()`` deadline) wait until
        everything noted so far is committed; None if that did not happen in time."""
        for shard in self.shards:
            shard.urgent = True
            shard.wake.set()
        complete = True
        if before is not None:
            while self.pending and time.monotonic() < before:
                time.sleep(0.002)
            complete = not self.pending
        out = Written()
        for shard in self.shards:
            with shard.lock:
                out.not_started += shard.refused
                shard.refused = []
        return out if complete else None

    def close(self, before: Optional[float] = None) -> None:
        """Write what is pending (until ``before``, default 3 s from now), end the threads,
        close the connections."""
        self.flush(before=before if before is not None else time.monotonic() + 3.0)
        self._closing = True
        for shard in self.shards:
            shard.wake.set()
        for shard in self.shards:
            if shard.thread is not None:
                shard.thread.join(timeout=5.0)
            shard.buffer.db.close()

    # ---- a writer's thread ------------------------------------------------------------------
    def _serve(self, shard: _Shard) -> None:
        buffer = shard.buffer
        while not self._closing:
            with shard.lock:
                ready = buffer.pending and (shard.urgent or buffer.due())
                if ready:
                    shard.urgent = False
                    shard.writing = buffer.take()
            if not ready:  # a quarter period late at most: batches stay ~flush_seconds apart
                shard.wake.wait(self.flush_seconds / 4)
                shard.wake.clear()
                continue
            self._write(shard)

    def _write(self, shard: _Shard) -> None:
        batch = shard.writing
        assert batch is not None
        try:
            written: Optional[Written] = shard.buffer.db.try_run(shard.buffer.write, batch)
        except DatabaseUnavailable:
            written = None
        except Exception as exc:  # noqa: BLE001 - logged by the connection; kept pending
            shard.buffer.db.log(f"a status writer failed, keeping its batch: {exc}")
            written = None
        pid = shard.buffer.db.backend_pid
        if self.owner is not None and pid != shard.pid:  # (re)connected
            self.owner.peer_pids.discard(shard.pid)
            self.owner.peer_pids.add(pid)
            shard.pid = pid
        with shard.lock:
            shard.writing = None
            if written is None:
                shard.buffer.restore(batch)
            else:
                shard.refused += written.not_started
        if written is None:
            time.sleep(RETRY_SECONDS)


def writer_count(setting: int, nodes: int) -> int:
    """How many writers: ``setting`` (``launcher: status_writers``), or for 0 (auto) one per
    ``NODES_PER_WRITER`` nodes, 1 to ``MAX_AUTO_WRITERS``."""
    if setting > 0:
        return setting
    return max(1, min(MAX_AUTO_WRITERS, nodes // NODES_PER_WRITER))


def open_status(db: Database, session_id: int, *, writers: int, flush_seconds: float,
                start_message: str, processing: bool) -> StatusSink:
    """The serial master's status writer: one :class:`StatusBuffer` on the master's own
    connection ``db`` for ``writers`` < 2, else :class:`StatusWriters` with connections like
    ``db``'s. With ``processing`` (the launcher runs processing), a run's RUN_DONE with
    nothing to postprocess or stage out goes on to JOB_FINISHED as it is recorded
    (:data:`transitions.FINISH_ON_RECORD`). Close it with :func:`close_status`."""
    follow = transitions.FINISH_ON_RECORD if processing else None
    if writers < 2:
        return StatusBuffer(db, session_id, flush_seconds, start_message=start_message,
                            follow=follow)

    def connect(k: int) -> Database:
        return Database(db.db_path, f"{db.application_name}-writer{k}", stop=db.stop,
                        reconnect_max_seconds=db.reconnect_max_seconds, log=db.log)

    return StatusWriters(connect, session_id, writers, flush_seconds,
                         start_message=start_message, follow=follow, owner=db)


def close_status(sink: StatusSink) -> None:
    """End the writer threads of ``sink`` (if any), once its master returned."""
    if isinstance(sink, StatusWriters):
        sink.close()
