"""The claim's SQL (:func:`balsam.core.leases.claim`, :func:`balsam.core.leases.cycle`).

Three shapes, run with their generic plan (prepared once per connection) unless a tag filter is
given (:func:`planned_per_call`):

* no workflow filter: the claim index (``job_claim_serial_pri`` / ``job_claim_mpi_pri``) read
  in the claim's order under a ``LIMIT``: it reads only what it takes when most claimable jobs
  pass the other filters;
* a time limit (``max_wall_minutes``, the time a launcher has left) without a workflow or tag
  filter: the claim index group by group (:func:`_by_group`);
* a tag filter without a workflow filter: the first shape, planned per call with the tag's
  value, so a rare tag's jobs are read from ``job_claim_tags`` (a partial GIN index of the
  claimable jobs' tags, migration 0020) and a common tag's from the claim index in order;
* a workflow filter (``--wf-filter``, "workflow contains"): the matching names are read from
  :data:`WORKFLOWS_TABLE` (migrations 0021-0022: every workflow with a claimable job, and some
  whose jobs were claimed since, with the claim key of its best claimable job in each claim
  order, never later than the truth: kept by triggers and :func:`refresh_workflows`); the first
  ``limit`` + :data:`CANDIDATE_SLACK` by key are read in the claim order from
  ``job_claim_wf_serial`` / ``job_claim_wf_mpi`` (migration 0020) without a lock, merged and
  cut to the limit (:func:`_top_rows`; every matching workflow only when stale keys could
  change the answer); then each workflow's share of the cut is read again and locked (``SKIP
  LOCKED``: rows another claimer holds are passed for the workflow's next ones), and the
  workflows claimed from are queued for a refresh at commit. Before session 17 the filter only
  dropped rows of the claim index's scan (~130 ms at 600,000 claimable jobs for a rare
  workflow); then one descent per claimable workflow (~170 ms with 50,000), then one per
  matching workflow (~130 ms with 50,000 behind another workflow; benchmarks/README.md, "Issue
  16, session 17" and "session 18").

The claim locks only the rows it claims. Under contention the order is the claim order within
each workflow, and across workflows the claim order of the unlocked read: a claimer whose
workflow share was taken by another gets that workflow's next rows, not another workflow's
(fewer than its share if that workflow has no more: a claim may then return fewer than the
limit while other matching workflows have jobs; the next claim gets them).
"""
from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from typing import Any, Callable, Optional

from balsam.core import retries, schema
from balsam.core.sql import like_contains
from balsam.core.states import RUNNABLE_STATES
from balsam.db.dbapi import Cursor, fetch_one

JOB = schema.JOB_TABLE
WORKFLOWS_TABLE = "core_claimworkflow"
"""The names of the workflows with claimable jobs, and some whose jobs were claimed since
(migration 0021: kept by triggers, pruned by :func:`prune_workflows`)."""
WORKFLOWS_LOCK_KEY = 0x434C4D57
"""The advisory locks between writers adding names or lowering keys (shared) and
:func:`refresh_workflows` (exclusive): ``(WORKFLOWS_LOCK_KEY, hashtext(workflow) & 127)``, the
key migrations 0021 and 0022 use (b"CLMW"), one of :data:`LOCK_BUCKETS` per workflow."""
LOCK_BUCKETS = 128
"""Lock buckets of workflows: a writer takes one per bucket its statement touches (at most
this many locks however many workflows a bulk insert has); a refresh skips a bucket a writer
holds."""
SCAN_NAMES = 4096
"""A filter matching at most this many names takes its candidates from a scan of the names
(then sorted by key); more (a broad filter) from the key index in order, where they come early.
Reading the key index for a filter matching 2% of 50,000 names with equal keys went through
~35,000 entries (the names in alphabetical order): ~15 ms, against ~5 for the scan."""
REFRESH_TABLE = "core_claimworkflow_refresh"
"""Names queued for :func:`refresh_workflows` at the transaction's commit (migration 0022: an
unlogged table, a deferred constraint trigger): by a filtered claim and by the prune."""
CANDIDATE_SLACK = 32
"""Workflows read by a filtered claim beyond its limit (in stored-key order): room for
workflows emptied since their keys were stored (:func:`_top_rows`)."""
SERIAL_KEY = "ARRAY[-priority::bigint, node_packing_count, -wall_time_minutes::bigint]"
MPI_KEY = "ARRAY[-priority::bigint, -num_nodes::bigint, -wall_time_minutes::bigint]"
"""A job's claim key in each mode: arrays compare in the claim order (migration 0022's)."""
PRUNE_BATCH = 1000
"""Names refreshed at most per :func:`prune_workflows` (one bucket's: ~400 at 50,000 names;
two index descents each, ~5 us)."""

CLAIM_COLUMNS = (
    "job_id", "name", "workflow", "application", "args", "num_nodes", "ranks_per_node",
    "threads_per_rank", "threads_per_core", "cpu_affinity", "node_packing_count",
    "wall_time_minutes", "environ_vars", "mpi_flags", "user_workdir", "state", "priority",
    "gpus_per_rank",
)
"""What a launcher needs to run a claimed job (the claim adds ``runs`` and ``parents``)."""

RUNNABLE_SQL = "(" + ", ".join(f"'{s}'" for s in RUNNABLE_STATES) + ")"

SERIAL_ORDER = ("priority DESC", "node_packing_count", "wall_time_minutes DESC")
MPI_ORDER = ("priority DESC", "num_nodes DESC", "wall_time_minutes DESC")


def planned_per_call(tags: Optional[Mapping[str, str]]) -> bool:
    """Whether a claim with these filters must be planned with its values (not prepared): a
    tag filter's best path depends on the tag's frequency, which only the value tells (a rare
    tag: ``job_claim_tags`` then a sort; a common one: the claim index in order). Its generic
    plan read every claimable job for a rare tag (~200-500 ms at 600,000)."""
    return bool(tags)


def gpu_condition(serial: bool, gpus_per_node: int, params: list[Any], alias: str = "j.") -> str:
    """SQL: the job's GPUs fit a node of a launcher whose nodes have ``gpus_per_node``,
    appending the param: serial mode gives each task one GPU when nodes have any (so a task
    may ask for at most one), MPI mode gives a job every GPU of its nodes."""
    if serial:
        params.append(min(1, gpus_per_node))
        return f"{alias}gpus_per_rank <= %s"
    params.append(gpus_per_node)
    return f"{alias}gpus_per_rank * {alias}ranks_per_node <= %s"


def statement(session_id: int, limit: int, *, serial: bool, max_nodes: int,
              wf_filter: Optional[str], max_wall_minutes: Optional[float],
              exclude_ids: tuple[Any, ...], tags: Optional[Mapping[str, str]] = None,
              gpus_per_node: Optional[int] = None,
              ) -> tuple[str, list[Any], Callable[[dict[str, Any]], Any]]:
    """(CTEs ``c_sel``, ``c_upd`` of the claim -- with a workflow filter also ``c_wf`` --,
    their parameters, the claim order as a sort key of the rows ``c_upd`` returns)."""
    shape = [f"state IN {RUNNABLE_SQL}", "session_id IS NULL"]  # the partial indexes' rows
    if serial:
        shape += ["num_nodes = 1", "ranks_per_node = 1"]
    order = ", ".join(SERIAL_ORDER if serial else MPI_ORDER)
    where, params = _filters(serial, max_nodes, max_wall_minutes, exclude_ids, tags,
                             gpus_per_node)
    if wf_filter:
        select, params = _by_workflow(shape, where, params, serial, order, wf_filter, limit)
    elif max_wall_minutes is not None and not tags:
        select, params = _by_group(shape, where, params, serial, limit)
    else:
        select = (f"c_sel AS (SELECT job_id FROM {JOB} WHERE {' AND '.join(shape + where)} "
                  f"ORDER BY {order} LIMIT %s FOR NO KEY UPDATE SKIP LOCKED)")
        params = params + [limit]
    # "runs": real runs so far (RUNNING visits less those that were none: retries.RUNS_SQL), so
    # a task knows its attempt number (BALSAM_JOB_ATTEMPT) and can make its effects idempotent;
    # "parents" (BALSAM_PARENT_IDS) in the same statement, by the child_id index.
    # The id as text: psycopg2 would parse each into a uuid.UUID for the caller to print back.
    cols = ", ".join("j.job_id::text AS job_id" if c == "job_id" else f"j.{c}"
                     for c in CLAIM_COLUMNS) + (
        f", {retries.RUNS_SQL} AS runs"
        f", ARRAY(SELECT d.parent_id::text FROM {schema.DEP_TABLE} d "
        "WHERE d.child_id = j.job_id ORDER BY d.id) AS parents")
    # NO KEY UPDATE, not UPDATE: the key-share lock a concurrent transaction takes on a job
    # while it inserts an event or a dependency row for it (foreign keys) must not make the
    # claim skip the job -- no notification would come to retry it. The claimed rows are
    # updated by primary key (= ANY of an array): joined to c_sel, a claim of a few thousand
    # was planned as a hash join over a scan of the whole job table (its dead row versions
    # too), a cost that grew with the table instead of the claim.
    sql = f"""{select}, c_upd AS (
            UPDATE {JOB} j SET session_id = %s
            WHERE j.job_id = ANY(ARRAY(SELECT job_id FROM c_sel)) RETURNING {cols}
        )"""
    if wf_filter:  # the workflows claimed from and the stale candidates: refreshed at commit
        sql += f""", c_refresh AS (
            INSERT INTO {REFRESH_TABLE} (names)
            SELECT n FROM (SELECT ARRAY(SELECT workflow FROM c_upd UNION SELECT wf FROM c_stale)
                           AS n) a WHERE cardinality(n) > 0
        )"""
    order_key: Callable[[dict[str, Any]], Any] = (
        (lambda r: (-r["priority"], r["node_packing_count"], -r["wall_time_minutes"]))
        if serial else (lambda r: (-r["priority"], -r["num_nodes"], -r["wall_time_minutes"])))
    return sql, params + [session_id], order_key


def _filters(serial: bool, max_nodes: int, max_wall_minutes: Optional[float],
             exclude_ids: tuple[Any, ...], tags: Optional[Mapping[str, str]],
             gpus_per_node: Optional[int]) -> tuple[list[str], list[Any]]:
    """The conditions besides the claimable shape and the workflow, with their params."""
    where = ["num_nodes <= %s"]
    params: list[Any] = [max_nodes]
    if tags:
        where.append("tags @> %s::jsonb")
        params.append(json.dumps(dict(tags), sort_keys=True))
    if gpus_per_node is not None:
        where.append(gpu_condition(serial, gpus_per_node, params, ""))
    if max_wall_minutes is not None:  # prepared: never rounded; an index bound (integer)
        where.append("wall_time_minutes <= least(floor(%s::numeric), 2147483647)::integer")
        params.append(max_wall_minutes)
    if exclude_ids:
        where.append("NOT job_id = ANY(%s::uuid[])")
        params.append([str(j) for j in exclude_ids])
    return where, params


def _by_workflow(shape: list[str], where: list[str], params: list[Any], serial: bool,
                 order: str, wf_filter: str, limit: int) -> tuple[str, list[Any]]:
    """``c_cand`` .. ``c_top`` (the claim's rows' workflows, read without a lock:
    :func:`_top_rows`), ``c_n`` (how many rows each workflow has there) and ``c_sel`` (that
    many of each, locked as read)."""
    conds = " AND ".join(shape + where)
    top, top_params = _top_rows(shape, where, params, serial, order, limit,
                                like_contains(wf_filter))
    select = f"""{top}, c_n AS (
            SELECT wf, count(*) AS n FROM c_top GROUP BY wf
        ), c_sel AS (
            SELECT x.job_id FROM c_n, LATERAL (
                SELECT job_id FROM {JOB} WHERE workflow = c_n.wf AND {conds}
                ORDER BY {order} LIMIT c_n.n FOR NO KEY UPDATE SKIP LOCKED) x
        )"""
    return select, top_params + params


def _top_rows(shape: list[str], where: list[str], params: list[Any], serial: bool, order: str,
              limit: int, pattern: str) -> tuple[str, list[Any]]:
    """``c_top``: the workflows of the first ``limit`` rows of the matching workflows in claim
    order, read without a lock.

    The first ``limit`` + :data:`CANDIDATE_SLACK` matching workflows by stored key
    (``c_cand``: from the matching names themselves when a scan finds at most
    :data:`SCAN_NAMES`, ``c_some``; else read in key order from ``claimworkflow_skey`` /
    ``_mkey``, which a broad filter matches early) are read in the claim order, the
    ``r``-th at most ``max(1, limit - r + 1)`` rows (``c_rows``: the ``r - 1`` before it
    usually hold a row ahead of all of its), merged and cut (``c_cut``). A stored key is never
    later than its workflow's best claimable row, so the cut is the claim's answer when
    (``c_ok``) no workflow left unread has a key before the cut's last row, and no workflow that
    gave its whole cap (it may have more) ends before that row (or the cut fell short of the
    limit). Otherwise (keys gone stale since jobs were claimed, or rows the other filters drop)
    every matching workflow is read (``c_all``: one descent each, the path before session 18)."""
    conds = " AND ".join(shape + where)
    key, col = (SERIAL_KEY, "skey") if serial else (MPI_KEY, "mkey")
    cands = limit + CANDIDATE_SLACK
    sql = f"""c_some AS (
            SELECT workflow AS wf, {col} AS k FROM {WORKFLOWS_TABLE}
            WHERE workflow LIKE %s AND {col} IS NOT NULL LIMIT %s
        ), c_some_n AS (
            SELECT count(*) AS n FROM c_some
        ), c_cand AS (
            SELECT wf, k, row_number() OVER (ORDER BY k, wf) AS r FROM (
                (SELECT wf, k FROM c_some WHERE (SELECT n FROM c_some_n) <= %s
                 ORDER BY k, wf LIMIT %s)
                UNION ALL
                (SELECT workflow, {col} FROM {WORKFLOWS_TABLE}
                 WHERE (SELECT n FROM c_some_n) > %s
                   AND workflow LIKE %s AND {col} IS NOT NULL
                 ORDER BY {col}, workflow LIMIT %s)) c
        ), c_rows AS (
            SELECT c.wf, c.r, x.k FROM c_cand c, LATERAL (
                SELECT {key} AS k FROM {JOB} WHERE workflow = c.wf AND {conds}
                ORDER BY {order} LIMIT greatest(1, %s - c.r + 1)) x
            WHERE c.r <= %s
        ), c_cut AS (
            SELECT wf, k FROM c_rows ORDER BY k LIMIT %s
        ), c_ok AS (
            SELECT NOT EXISTS (
                    SELECT 1 FROM c_rows GROUP BY wf, r
                    HAVING count(*) >= greatest(1, %s - r + 1)
                       AND (t.n < %s OR max(k) < t.last))
               AND (t.next IS NULL OR (t.n = %s AND t.last <= t.next)) AS ok
            FROM (SELECT (SELECT count(*) FROM c_cut) AS n, (SELECT max(k) FROM c_cut) AS last,
                         (SELECT k FROM c_cand WHERE r = %s) AS next) t
        ), c_all AS (
            SELECT x.workflow AS wf FROM (
                SELECT workflow FROM {WORKFLOWS_TABLE}
                WHERE workflow LIKE %s AND {col} IS NOT NULL) w, LATERAL (
                SELECT workflow, {key} AS k FROM {JOB} WHERE workflow = w.workflow AND {conds}
                ORDER BY {order} LIMIT %s) x
            WHERE NOT (SELECT ok FROM c_ok)
            ORDER BY x.k LIMIT %s
        ), c_top AS (
            SELECT wf FROM c_cut WHERE (SELECT ok FROM c_ok)
            UNION ALL
            SELECT wf FROM c_all
        ), c_stale AS (
            SELECT c.wf FROM c_cand c LEFT JOIN (SELECT wf, min(k) AS k FROM c_rows GROUP BY wf) f
                ON f.wf = c.wf
            WHERE c.r <= %s AND (f.k IS NULL OR (NOT (SELECT ok FROM c_ok) AND f.k > c.k))
        )"""
    # (the gates are one-time filters: the fallback is not run when the candidates answer;
    # c_stale, refreshed at commit: the candidates read that had no row -- most likely emptied,
    # each one left would take a candidate's place at every claim until the prune found it --
    # and, when the fallback ran, those whose first row came after their key)
    return sql, ([pattern, SCAN_NAMES + 1, SCAN_NAMES, cands + 1, SCAN_NAMES, pattern, cands + 1]
                 + params + [limit, cands, limit, limit, limit, limit, cands + 1, pattern]
                 + params + [limit, limit, cands])


def refresh_workflows(cursor: Cursor, names: Sequence[str]) -> int:
    """Bring the stored claim keys of ``names`` up to date, dropping those with no claimable
    job left; how many were changed or dropped. A workflow whose lock bucket a writer holds (it
    may be making jobs of it claimable) is skipped: its key stays early, which costs a later
    claim a descent, never a job. The buckets taken are held exclusive to the caller's commit
    (that bucket's writers wait until then): call it last before a commit. Claims and the prune
    queue theirs (:data:`REFRESH_TABLE`), run at their commit."""
    if not names:
        return 0
    cursor.execute("SELECT core_claimworkflow_refresh(%s::text[])", [sorted(set(names))])
    return int(fetch_one(cursor)[0])


def prune_workflows(cursor: Cursor, batch: int = PRUNE_BATCH,
                    bucket: Optional[int] = None) -> int:
    """Queue a refresh (:func:`refresh_workflows`: new keys, names with no claimable job
    dropped), run at the caller's commit, of up to ``batch`` listed workflows of one lock
    bucket (``bucket``, or one at random; found by a scan of the names, no lock held), so that
    only that bucket's writers wait, and only for the commit (before session 18: one lock for
    every writer from the prune to the sweep's commit). Returns the number queued. Filtered
    claims refresh what they read; this catches the rest (workflows emptied by unfiltered
    claims, names no claim reads), a bucket a sweep."""
    which = random.randrange(LOCK_BUCKETS) if bucket is None else bucket % LOCK_BUCKETS
    cursor.execute(f"""INSERT INTO {REFRESH_TABLE} (names) SELECT n FROM (SELECT ARRAY(
        SELECT workflow FROM {WORKFLOWS_TABLE} WHERE hashtext(workflow) & {LOCK_BUCKETS - 1} = %s
        LIMIT %s) AS n) a WHERE cardinality(n) > 0 RETURNING cardinality(names)""",
                   [which, batch])
    row = cursor.fetchone()
    return 0 if row is None else int(row[0])


def _by_group(shape: list[str], where: list[str], params: list[Any], serial: bool,
              limit: int) -> tuple[str, list[Any]]:
    """``c_sel`` for a time limit (``max_wall_minutes``): the claim index's groups of one
    priority and packing (serial) or node count (MPI), in the claim order (a loose scan,
    evaluated only as far as the claim needs), each read from its longest job that fits down
    (an index range: the jobs that fit are the end of each group). A nested loop pulled by the
    ``LIMIT`` in group order is the claim order, so nothing is sorted or locked beyond the
    limit. Without it, a time limit only dropped rows of the claim index's scan: near the end of
    an allocation with long jobs left, every claim read every claimable job."""
    base = " AND ".join(shape)
    k, k_next, k_dir = (("node_packing_count", ">", "") if serial
                        else ("num_nodes", "<", " DESC"))
    # the whole claim order, though one group has one priority and k: the group's own index
    # is then the one that needs no sort (serial mode's jobs are in both claim indexes)
    inner_order = ", ".join(SERIAL_ORDER if serial else MPI_ORDER)
    select = f"""c_grp AS (
            WITH RECURSIVE g(p, k) AS (
                (SELECT priority, {k} FROM {JOB} WHERE {base}
                 ORDER BY priority DESC, {k}{k_dir} LIMIT 1)
                UNION ALL
                SELECT n.p, n.k FROM g, LATERAL (
                    (SELECT priority AS p, {k} AS k FROM {JOB}
                     WHERE {base} AND priority = g.p AND {k} {k_next} g.k
                     ORDER BY {k}{k_dir} LIMIT 1)
                    UNION ALL
                    (SELECT priority, {k} FROM {JOB} WHERE {base} AND priority < g.p
                     ORDER BY priority DESC, {k}{k_dir} LIMIT 1)
                    LIMIT 1) n)
            SELECT p, k FROM g
        ), c_sel AS (
            SELECT x.job_id FROM c_grp, LATERAL (
                SELECT job_id FROM {JOB}
                WHERE priority = c_grp.p AND {k} = c_grp.k AND {' AND '.join(shape + where)}
                ORDER BY {inner_order} LIMIT %s FOR NO KEY UPDATE SKIP LOCKED) x
            LIMIT %s
        )"""
    # (the inner LIMIT makes the generic plan an ordered index scan, pulled row by row: without
    # it, a bitmap scan read the whole group before the outer LIMIT could stop it)
    return select, params + [limit, limit]
