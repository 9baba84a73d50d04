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
  :data:`WORKFLOWS_TABLE` (migration 0021: every workflow with a claimable job, kept by
  triggers, and some whose jobs were claimed since, until :func:`prune_workflows`), each
  matching workflow's first rows read in the claim order from ``job_claim_wf_serial`` /
  ``job_claim_wf_mpi`` (migration 0020) without a lock, merged and cut to the limit; then each
  workflow's share of the cut is read again and locked (``SKIP LOCKED``: rows another claimer
  holds are passed for the workflow's next ones). With more than :data:`HEAD_WORKFLOWS` matching
  workflows the claim index's head is tried first (:func:`_top_rows`). Before session 17 the
  filter only dropped rows of the claim index's scan (~130 ms at 600,000 claimable jobs for a
  rare workflow); the first fix listed the workflows by a loose index scan (one descent per
  claimable workflow: ~30 ms with 10,000 workflows, ~170 ms with 50,000) and locked up to the
  limit per matching workflow (benchmarks/README.md, "Issue 16, session 17").

The claim locks only the rows it claims. Under contention the order is the claim order within
each workflow, and across workflows the claim order of the unlocked read: a claimer whose
workflow share was taken by another gets that workflow's next rows, not another workflow's
(fewer than its share if that workflow has no more: a claim may then return fewer than the
limit while other matching workflows have jobs; the next claim gets them).
"""
from __future__ import annotations

import json
from collections.abc import Mapping
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
"""Advisory lock between the triggers adding names (shared) and the pruner (exclusive): a
fixed number, b"CLMW", the one migration 0021's trigger uses."""
HEAD_WORKFLOWS = 64
"""Above this many matching workflows a filtered claim first tries the claim index's head
(:func:`_top_rows`): reading ``limit`` + :data:`HEAD_SLACK` rows costs about what that many
workflows' descents do."""
HEAD_SLACK = 32
"""Rows of the head read beyond the limit (other workflows' or unfitting jobs among them)."""
PRUNE_BATCH = 1000
"""Names checked per :func:`prune_workflows` (one index descent each, ~4 us)."""

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
        select, params = _by_workflow(shape, where, params, order, wf_filter, limit)
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


def _by_workflow(shape: list[str], where: list[str], params: list[Any], order: str,
                 wf_filter: str, limit: int) -> tuple[str, list[Any]]:
    """``c_wf`` (the listed workflows containing ``wf_filter``), ``c_top`` (the claim's rows,
    read without a lock: :func:`_top_rows`), ``c_n`` (how many of them each workflow has) and
    ``c_sel`` (that many of each, locked as read)."""
    conds = " AND ".join(shape + where)
    top, top_params = _top_rows(shape, where, params, order, limit, like_contains(wf_filter))
    select = f"""c_wf AS (
            SELECT workflow AS wf FROM {WORKFLOWS_TABLE} WHERE workflow LIKE %s
        ), {top}, c_n AS (
            SELECT workflow AS wf, count(*) AS n FROM c_top GROUP BY workflow
        ), c_sel AS (
            SELECT x.job_id FROM c_n, LATERAL (
                SELECT job_id FROM {JOB} WHERE workflow = c_n.wf AND {conds}
                ORDER BY {order} LIMIT c_n.n FOR NO KEY UPDATE SKIP LOCKED) x
        )"""
    return select, [like_contains(wf_filter)] + top_params + params


def _top_rows(shape: list[str], where: list[str], params: list[Any], order: str,
              limit: int, pattern: str) -> tuple[str, list[Any]]:
    """``c_head`` and ``c_top``: the first ``limit`` rows of the matching workflows in claim
    order (their workflows), unlocked. Each matching workflow's first rows are read from its
    own index range, merged and cut (one descent per matching workflow). When more than
    :data:`HEAD_WORKFLOWS` workflows match, the claim index's first ``limit`` +
    :data:`HEAD_SLACK` rows are read first (``c_head``); if ``limit`` of them match and pass
    the filters, they are the answer (every later row comes after them in the claim order) and
    the per-workflow reads are skipped (a campaign's launcher whose workflows fill the head).
    The head's rows are matched by ``pattern`` itself: a claimable job's workflow is listed."""
    conds = " AND ".join(shape + where)
    outer = ", ".join(f"x.{term}" for term in order.split(", "))
    keys = ", ".join(term.split()[0] for term in order.split(", "))
    sql = f"""c_head AS (
            SELECT h.workflow, {", ".join(f"h.{k}" for k in keys.split(", "))} FROM (
                SELECT * FROM {JOB} WHERE {" AND ".join(shape)}
                ORDER BY {order} LIMIT %s) h
            WHERE (SELECT count(*) FROM (SELECT FROM c_wf LIMIT {HEAD_WORKFLOWS + 1}) w)
                  > {HEAD_WORKFLOWS}
              AND h.workflow LIKE %s AND {" AND ".join(where)}
        ), c_top AS (
            (SELECT x.workflow FROM c_head x WHERE (SELECT count(*) FROM c_head) >= %s
             ORDER BY {outer} LIMIT %s)
            UNION ALL
            (SELECT x.workflow FROM c_wf, LATERAL (
                SELECT workflow, {keys} FROM {JOB} WHERE workflow = c_wf.wf AND {conds}
                ORDER BY {order} LIMIT %s) x
             WHERE (SELECT count(*) FROM c_head) < %s
             ORDER BY {outer} LIMIT %s)
        )"""
    # (the gates are one-time filters: the branch not taken is not run)
    return sql, ([limit + HEAD_SLACK, pattern] + params + [limit, limit] + params
                 + [limit, limit, limit])


def prune_workflows(cursor: Cursor, batch: int = PRUNE_BATCH) -> int:
    """Drop up to ``batch`` names of :data:`WORKFLOWS_TABLE` (a random sample of that many is
    checked) whose workflow has no claimable job left; the number dropped. Does nothing (0)
    while a writer that may add a name is in flight: the advisory lock its trigger holds shared
    is taken here exclusive, try only (never waits), and the jobs are checked by the next
    statement, whose snapshot sees every such writer committed. Held to the caller's commit:
    call it in a transaction (not autocommit, where the lock would end with its statement)."""
    cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [WORKFLOWS_LOCK_KEY])
    if not fetch_one(cursor)[0]:
        return 0
    cursor.execute(f"""
        DELETE FROM {WORKFLOWS_TABLE} w WHERE w.workflow IN (
            SELECT workflow FROM {WORKFLOWS_TABLE} ORDER BY random() LIMIT %s)
          AND NOT EXISTS (SELECT 1 FROM {JOB} j WHERE j.workflow = w.workflow
                          AND j.state IN {RUNNABLE_SQL} AND j.session_id IS NULL)""", [batch])
    return int(cursor.rowcount)


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
