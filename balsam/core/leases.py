"""Launcher sessions: open, heartbeat, claim jobs, start them, release, close, sweep.

A launcher opens a session (a ``core_launchersession`` row) and renews its heartbeat. It claims
runnable jobs by setting their ``session_id`` in one ``SELECT ... FOR UPDATE SKIP LOCKED``
statement, so concurrent launchers never claim the same job; starting a claimed job is a state
change (:func:`lifecycle.transition` with ``holder``). Any state but RUNNING and USER_KILLED
releases the hold.

When a session's heartbeat is older than its lease, :func:`sweep` (run by launchers and the
service) moves its RUNNING jobs to RUN_TIMEOUT with a message saying why, releases its other
claims and closes it. All times are the database's, so nodes' clocks do not matter.
Every function takes a DB-API cursor and works in the caller's transaction.
"""
from __future__ import annotations

import json
import zlib
from collections.abc import Collection, Mapping, Sequence
from typing import Any, NamedTuple, Optional

from balsam.core import (
    claim_sql,
    killed_starts,
    launch_reports,
    launcher_moves,
    lifecycle,
    schema,
    serial_reports,
)
from balsam.core.sql import fetch_dicts, like_contains
from balsam.core.states import RUNNABLE_STATES, State
from balsam.db.dbapi import Cursor, fetch_one

JOB, SESSION = schema.JOB_TABLE, schema.SESSION_TABLE

CLAIM_COLUMNS = claim_sql.CLAIM_COLUMNS
gpu_condition = claim_sql.gpu_condition
_RUNNABLE_SQL = claim_sql.RUNNABLE_SQL
_claim_sql = claim_sql.statement


def open_session(cursor: Cursor, *, hostname: str, pid: int, job_mode: str, num_nodes: int,
                 lease_seconds: int, scheduler_id: str = "", label: str = "") -> int:
    """Start a session (heartbeat now) and return its id."""
    cursor.execute(
        f"INSERT INTO {SESSION} (hostname, pid, job_mode, label, scheduler_id, num_nodes, "
        "started_at, heartbeat, lease_seconds, end_reason) "
        "VALUES (%s, %s, %s, %s, %s, %s, now(), now(), %s, '') RETURNING id",
        [hostname, pid, job_mode, label, scheduler_id, num_nodes, lease_seconds])
    return int(fetch_one(cursor)[0])


def heartbeat(cursor: Cursor, session_id: int) -> bool:
    """Renew the lease. False if the session was closed meanwhile (swept as dead): its holder
    must stop its tasks at once and record nothing, because its jobs may already run elsewhere."""
    cursor.execute(f"UPDATE {SESSION} SET heartbeat = now() WHERE id = %s AND ended_at IS NULL "
                   "RETURNING id", [session_id])
    return cursor.fetchone() is not None


def lease_age(cursor: Cursor, session_id: int) -> Optional[float]:
    """Seconds since ``session_id``'s lease was last renewed, counted from the server's start
    if that came later (:func:`sweep`'s rule: a server restart gives every holder a whole lease
    to reconnect); None if the session is closed."""
    cursor.execute(f"SELECT EXTRACT(EPOCH FROM now() - GREATEST(heartbeat, "
                   f"pg_postmaster_start_time())) FROM {SESSION} "
                   "WHERE id = %s AND ended_at IS NULL", [session_id])
    row = cursor.fetchone()
    return None if row is None else float(row[0])


def claim(cursor: Cursor, session_id: int, limit: int, *, serial: bool, max_nodes: int,
          wf_filter: Optional[str] = None, max_wall_minutes: Optional[float] = None,
          exclude_ids: tuple[Any, ...] = (), tags: Optional[Mapping[str, str]] = None,
          gpus_per_node: Optional[int] = None) -> list[dict[str, Any]]:
    """Hold up to ``limit`` runnable, unheld jobs for ``session_id`` and return them.

    Each row also has ``runs``: how many runs the job's history shows so far, and
    ``parents``: the ids of its parents, in the order their edges were added.
    Higher ``priority`` first; then, ``serial``: only single-node, single-rank jobs,
    fewest-per-node packing first; otherwise jobs of at most ``max_nodes`` nodes, largest first.
    Both then longest wall time first. The order is that of the partial indexes
    ``job_claim_serial_pri`` / ``job_claim_mpi_pri``, so a claim reads only what it takes.
    ``wf_filter`` keeps jobs whose workflow contains it; ``tags`` those whose tags hold every
    given key and value (:func:`tags_clause`); ``max_wall_minutes`` those that can finish in
    the time left; ``gpus_per_node`` (None: no check) those whose GPUs fit (:func:`gpu_condition`).
    A workflow filter, a time limit and a tag filter each have their own index path, so a
    selective one reads what it claims, not every claimable job (:mod:`balsam.core.claim_sql`).
    A filtered claim also queues a refresh of the stored claim keys of the workflows it claimed
    from, and of those it found stale, run at the caller's commit
    (:func:`claim_sql.refresh_workflows`).
    """
    sql, params, order_key = _claim_sql(session_id, limit, serial=serial, max_nodes=max_nodes,
                                        wf_filter=wf_filter, max_wall_minutes=max_wall_minutes,
                                        exclude_ids=exclude_ids, tags=tags,
                                        gpus_per_node=gpus_per_node)
    text = f"WITH {sql} SELECT * FROM c_upd"
    # Prepared, with its generic plan (the same index scans as a custom plan): planning it was
    # ~0.25-0.8 ms per claim, as much as claiming ~20-50 jobs. One name per text (a filter
    # changes the text; the values are parameters). A tag filter's claim is planned per call.
    if claim_sql.planned_per_call(tags):
        cursor.execute(text, params)
    else:
        launcher_moves.execute_prepared(cursor, _prepared_name("balsam_claim", text), text,
                                        params, generic=True)
    rows = fetch_dicts(cursor)
    rows.sort(key=order_key)
    return rows


def _prepared_name(prefix: str, text: str) -> str:
    """A prepared statement's name for ``text``: the same in every process (not ``hash``)."""
    return f"{prefix}_{zlib.crc32(text.encode()):08x}"


def cycle(cursor: Cursor, session_id: int, moves: Sequence[tuple[str, State, str]], limit: int, *,
          serial: bool, max_nodes: int, wf_filter: Optional[str] = None,
          max_wall_minutes: Optional[float] = None, tags: Optional[Mapping[str, str]] = None,
          gpus_per_node: Optional[int] = None,
          follow: Optional[launcher_moves.FollowOn] = None,
          ) -> tuple[list[tuple[str, str, str]], list[dict[str, Any]]]:
    """One statement doing a launcher's routine work: record ``moves`` of jobs this session
    holds -- (job id, RUNNING or a run's end state, message), as :func:`launcher_moves.moves_sql`
    (with its ``follow``-on moves) -- and claim up to ``limit`` more jobs as :func:`claim` does
    (other rows: the jobs being moved are held already, so the claim cannot take them).
    Returns ([(job id, from state, to state)] of the moves made -- the move's target, not a
    follow-on state --, the claimed rows in claim order)."""
    moves_ctes, moves_params = launcher_moves.moves_sql(moves, session_id, follow)
    claim_ctes, claim_params, order_key = _claim_sql(
        session_id, limit, serial=serial, max_nodes=max_nodes, wf_filter=wf_filter,
        max_wall_minutes=max_wall_minutes, exclude_ids=(), tags=tags,
        gpus_per_node=gpus_per_node)
    text = f"""WITH {moves_ctes}, {claim_ctes}
        SELECT (SELECT coalesce(json_agg(json_build_array(job_id, from_state, target)), '[]')
                FROM t_upd),
               (SELECT coalesce(json_agg(row_to_json(c_upd)), '[]') FROM c_upd)"""
    # Planned once per connection, as the claim and the moves are (~0.5-0.7 ms per plan).
    if claim_sql.planned_per_call(tags):
        cursor.execute(text, moves_params + claim_params)
    else:
        launcher_moves.execute_prepared(cursor, _prepared_name("balsam_cycle", text), text,
                                        moves_params + claim_params, generic=True)
    moved, rows = fetch_one(cursor)
    rows.sort(key=order_key)
    return [(str(j), f, t) for j, f, t in moved], rows


def tags_clause(tags: Optional[Mapping[str, str]], params: list[Any],
                column: str = "j.tags") -> str:
    """`` AND <column> @> %s::jsonb`` for a tag filter (every key with its value), appending the
    param; "" for none. Containment is what ``Job.objects.filter(tags=...)`` means too."""
    if not tags:
        return ""
    params.append(json.dumps(dict(tags), sort_keys=True))
    return f" AND {column} @> %s::jsonb"


def holders_elsewhere(cursor: Cursor, session_id: int, *, serial: bool, max_nodes: int,
                      wf_filter: Optional[str] = None,
                      tags: Optional[Mapping[str, str]] = None,
                      gpus_per_node: Optional[int] = None) -> list[tuple[float, float]]:
    """[(seconds since its heartbeat, seconds until it can be swept)] for every open session
    other than ``session_id`` that holds jobs this launcher could run (RUNNING, or claimed in a
    runnable state; fitting ``serial``/``max_nodes``/``gpus_per_node``; matching ``wf_filter``
    and ``tags``). The second value follows :func:`sweep`'s rule (a whole lease after the
    heartbeat and after the server started; <= 0: now). An idle launcher uses it to tell a
    holder that stopped renewing its lease (wait for it, sweep it, run its jobs) from a live one
    (leave them to it)."""
    fit = "j.num_nodes <= %s" + (" AND j.num_nodes = 1 AND j.ranks_per_node = 1" if serial
                                  else "")
    params: list[Any] = [session_id, State.RUNNING.value, max_nodes]
    wf = ""
    if wf_filter:
        wf = " AND j.workflow LIKE %s"
        params.append(like_contains(wf_filter))
    wf += tags_clause(tags, params)
    if gpus_per_node is not None:
        wf += " AND " + gpu_condition(serial, gpus_per_node, params)
    cursor.execute(f"""
        SELECT EXTRACT(EPOCH FROM now() - s.heartbeat),
               EXTRACT(EPOCH FROM GREATEST(s.heartbeat, pg_postmaster_start_time())
                       + make_interval(secs => s.lease_seconds) - now())
        FROM {SESSION} s
        WHERE s.ended_at IS NULL AND s.id <> %s
          AND EXISTS (SELECT 1 FROM {JOB} j WHERE j.session_id = s.id
                      AND (j.state = %s OR j.state IN {_RUNNABLE_SQL}) AND {fit}{wf})""", params)
    return [(float(age), float(expires)) for age, expires in cursor.fetchall()]


SERVICE_LOCK_KEY = 0x42414C53414D5356
"""The advisory lock a running ``balsam service`` holds (``balsam.service.control.LOCK_KEY``,
repeated here: the launcher does not import the service; a test checks they agree)."""


def others_alive(cursor: Cursor, session_id: int) -> bool:
    """Whether anything besides ``session_id``'s launcher could still add work: another open
    session (a launcher, or the transition workers of another launcher or of a service; the
    launcher's own transition workers, same host and pid, do not count) or a running service
    (its advisory lock is held). A launcher with nothing left to run exits at once only when
    this is False."""
    cursor.execute(f"""
        SELECT EXISTS (SELECT 1 FROM {SESSION} s JOIN {SESSION} me ON me.id = %s
                       WHERE s.ended_at IS NULL AND s.id <> me.id
                         AND NOT (s.hostname = me.hostname AND s.pid = me.pid))
            OR EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted
                       AND objsubid = 1 AND classid::bigint = %s AND objid::bigint = %s)""",
                   [session_id, SERVICE_LOCK_KEY >> 32, SERVICE_LOCK_KEY & 0xFFFFFFFF])
    return bool(fetch_one(cursor)[0])


def start(cursor: Cursor, session_id: int, job_ids: list[str], message: Any = "") -> list[str]:
    """Mark held, runnable jobs RUNNING; return the ids that moved (others were killed or
    changed by a user meanwhile and must not be started)."""
    moved = lifecycle.transition(cursor, job_ids, State.RUNNING, message, holder=session_id,
                                 sources=RUNNABLE_STATES)
    return [job_id for job_id, _ in moved]


def finish(cursor: Cursor, session_id: int, job_ids: list[str], state: State,
           messages: Any = "") -> list[str]:
    """Record the end of runs (RUN_DONE, RUN_ERROR, RUN_TIMEOUT) of jobs this session runs;
    returns the ids recorded (a job a user killed meanwhile stays USER_KILLED)."""
    moved = lifecycle.transition(cursor, job_ids, state, messages, holder=session_id,
                                 sources=[State.RUNNING.value])
    return [job_id for job_id, _ in moved]


def record_lost_starts(cursor: Cursor, session_id: int, started: Mapping[str, int],
                       start_message: str, message: Optional[str], since: int = 0) -> list[str]:
    """Record runs this session started but never recorded (its launcher died in between).

    ``started`` maps job ids to how many times the session started them since job event
    ``since`` (its current ensemble's, :mod:`balsam.core.serial_reports`); a job the session
    still holds outside RUNNING with fewer RUNNING events carrying ``start_message`` after
    ``since`` gets one run recorded: RUNNING (``start_message``, marked late), then
    RUN_TIMEOUT with ``message``, which releases it so the retry rules apply (``message``
    None: the task may still run, the job stays RUNNING and held until the session is closed
    or swept). A job a user killed meanwhile gets its run recorded after the kill
    (:func:`killed_starts.record_lost`; not with ``message`` None). Returns the ids."""
    if not started:
        return []
    cursor.execute(f"""
        SELECT j.job_id, (SELECT count(*) FROM {schema.EVENT_TABLE} e WHERE e.job_id = j.job_id
                          AND e.to_state = %s AND e.message = %s AND e.id > %s)
        FROM {JOB} j WHERE j.job_id = ANY(%s::uuid[]) AND j.session_id = %s AND j.state <> %s""",
                   [State.RUNNING.value, start_message, since, list(started), session_id,
                    State.RUNNING.value])
    lost = [str(job_id) for job_id, runs in cursor.fetchall() if started[str(job_id)] > runs]
    moved = start(cursor, session_id, lost, f"{start_message} (recorded after the run)")
    if message is None:
        return moved
    killed = killed_starts.record_lost(cursor, session_id, [j for j in lost if j not in moved],
                                       f"{start_message} (recorded after the run)", message)
    return finish(cursor, session_id, moved, State.RUN_TIMEOUT, message) + killed


def killed(cursor: Cursor, session_id: int) -> list[str]:
    """Jobs this session holds that a user killed (their processes must be stopped)."""
    cursor.execute(f"SELECT job_id FROM {JOB} WHERE session_id = %s AND state = %s",
                   [session_id, State.USER_KILLED.value])
    return [str(r[0]) for r in cursor.fetchall()]


def release(cursor: Cursor, session_id: int, job_ids: Optional[list[str]] = None) -> int:
    """Drop this session's hold on jobs that are not RUNNING (all of them, or ``job_ids``)."""
    sql = f"UPDATE {JOB} SET session_id = NULL WHERE session_id = %s AND state <> %s"
    params: list[Any] = [session_id, State.RUNNING.value]
    if job_ids is not None:
        sql += " AND job_id = ANY(%s::uuid[])"
        params.append(job_ids)
    cursor.execute(sql, params)
    return int(cursor.rowcount)


def close_session(cursor: Cursor, session_id: int, reason: str = "launcher exited",
                  launched: Optional[Collection[str]] = None) -> int:
    """End a session: any job it still shows RUNNING becomes RUN_TIMEOUT (a safety net: the
    launcher records its runs first), every other hold is released. ``launched``: the jobs its
    dead launcher is known to have launched (:mod:`balsam.core.launch_reports`): the others
    it holds are recorded as no run first. Returns jobs timed out."""
    never: list[str] = []
    if launched is not None:
        never = launch_reports.settle(cursor, session_id, launched, reason)[0]
    cursor.execute(f"SELECT job_id FROM {JOB} WHERE session_id = %s AND state = %s",
                   [session_id, State.RUNNING.value])
    running = [str(r[0]) for r in cursor.fetchall()]
    timed_out = finish(cursor, session_id, running, State.RUN_TIMEOUT,
                       f"interrupted: {reason} while the job ran")
    release(cursor, session_id)
    cursor.execute(f"UPDATE {SESSION} SET ended_at = now(), end_reason = %s WHERE id = %s",
                   [reason, session_id])
    return len(timed_out) + len(never)


class Swept(NamedTuple):
    """A session :func:`sweep_sessions` closed."""

    session: int
    timed_out: int
    """Jobs recorded RUN_TIMEOUT (or as no run) by the close."""
    lost_starts: int
    """Starts its worker watchdogs reported and its history lacked, recorded before the close."""
    host: str
    pid: int
    watch: str = ""
    """Its serial-mode launcher's directory, read wholly: removed after the commit."""
    unread: tuple[str, ...] = ()
    """Report files of it not read within the bound (a hung file system): left in place."""


def sweep(cursor: Cursor, db_path: str = "") -> list[tuple[int, int]]:
    """:func:`sweep_sessions`, as [(session id, jobs timed out)]."""
    return [(s.session, s.timed_out) for s in sweep_sessions(cursor, db_path)]


_EXPIRED_SQL = ("ended_at IS NULL AND heartbeat < now() - make_interval(secs => lease_seconds) "
                "AND pg_postmaster_start_time() < now() - make_interval(secs => lease_seconds)")


def sweep_sessions(cursor: Cursor, db_path: str = "") -> list[Swept]:
    """Close every session whose lease expired; returns what was swept.

    Sessions are swept only once the server has been up for a whole lease, so launchers cut off
    by a database restart get the chance to reconnect and renew first. Concurrent sweepers
    skip each other's sessions (SKIP LOCKED). With ``db_path`` (the database directory), what
    a dead MPI-mode launcher's watchdog reports it launched decides which of its jobs ran
    (:mod:`balsam.core.launch_reports`), and the starts a dead serial-mode session's worker
    watchdogs report and its history lacks are recorded (:mod:`balsam.core.serial_reports`).
    The report files are read before any session is locked (a slow file system holds no lock);
    once the caller committed, :func:`serial_reports.discard` and
    :func:`launch_reports.discard` may remove them. Also prunes the list of claimable workflows
    and refreshes their claim keys (:func:`claim_sql.prune_workflows`).
    """
    cursor.execute(f"SELECT id, hostname, pid, job_mode FROM {SESSION} WHERE {_EXPIRED_SQL}")
    found = cursor.fetchall()
    swept = []
    if found:
        reports = {sid: _reports(db_path, sid, host, pid, mode) for sid, host, pid, mode in found}
        cursor.execute(f"""
            SELECT id, hostname, pid, to_char(heartbeat AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS')
            FROM {SESSION} WHERE id = ANY(%s) AND {_EXPIRED_SQL}
            ORDER BY id FOR UPDATE SKIP LOCKED""", [sorted(reports)])
        for sid, host, pid, beat in cursor.fetchall():
            swept.append(_close_dead(cursor, sid, host, pid, beat, *reports[sid]))
    claim_sql.prune_workflows(cursor)
    return swept


def after_sweep(db_path: str, swept: Sequence[Swept]) -> list[str]:
    """Once the sweep's transaction committed: remove the swept sessions' report files (read
    by it; a serial session's only if every one was read) and return a log line for each
    session."""
    lines = []
    for s in swept:
        launch_reports.discard(db_path, s.session)
        if s.watch and not s.unread and not serial_reports.discard(s.watch):
            lines.append(f"swept launcher session {s.session}: its report directory {s.watch} "
                         f"was not removed within {serial_reports.MAX_SECONDS:g} s")
        lost = (f", {s.lost_starts} start(s) its watchdogs reported and its history lacked "
                "recorded (RUNNING, then RUN_TIMEOUT: outcome unknown)" if s.lost_starts else "")
        unread = (f"; its report(s) {', '.join(s.unread)} not read within "
                  f"{serial_reports.MAX_SECONDS:g} s (a hung file system?): skipped, left in "
                  "place" if s.unread else "")
        lines.append(f"swept launcher session {s.session} (lease expired): {s.timed_out} "
                     f"job(s) recorded RUN_TIMEOUT{lost}{unread}")
    return lines


def _reports(db_path: str, sid: int, host: str, pid: int, mode: str
             ) -> tuple[Optional[serial_reports.Reported], Optional[frozenset[str]]]:
    """What dead session ``sid``'s watchdogs reported (serial mode's starts, MPI mode's
    launches; None where not known)."""
    if not db_path:
        return None, None
    started = serial_reports.unrecorded_starts(db_path, sid, host, pid) if (
        mode == "serial") else None
    return started, launch_reports.launched(db_path, sid, host, pid)


def _close_dead(cursor: Cursor, sid: int, host: str, pid: int, beat: str,
                reported: Optional[serial_reports.Reported],
                launched: Optional[frozenset[str]]) -> Swept:
    """Record dead session ``sid``'s reported lost starts, then close it."""
    reason = (f"launcher session {sid} ({host}:{pid}) lost its lease: no heartbeat since "
              f"{beat} UTC (killed, or its node was lost)")
    lost = 0
    for group in reported.generations if reported is not None else ():
        for started, end in ((group.dead, serial_reports.LOST_MESSAGE), (group.alive, None)):
            lost += len(record_lost_starts(cursor, sid, started,
                                           serial_reports.start_message(sid), end,
                                           since=group.since))
    closed = close_session(cursor, sid, reason, launched)
    if reported is None:
        return Swept(sid, closed, lost, host, pid)
    return Swept(sid, closed, lost, host, pid, reported.directory, tuple(reported.unread))
