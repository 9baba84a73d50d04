"""Other launcher sessions, as a launcher sees them: who else holds jobs it could run
(:func:`holders_elsewhere`), whether anything else could still add work (:func:`others_alive`),
and the tag filter's SQL both share with the claim (:func:`tags_clause`). Re-exported by
:mod:`balsam.core.leases` (split from it: that module had grown to 400 lines)."""
from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Optional

from balsam.core import claim_sql, schema
from balsam.core.sql import like_contains
from balsam.core.states import State
from balsam.db.dbapi import Cursor, fetch_one

JOB, SESSION = schema.JOB_TABLE, schema.SESSION_TABLE
gpu_condition = claim_sql.gpu_condition
_RUNNABLE_SQL = claim_sql.RUNNABLE_SQL


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
