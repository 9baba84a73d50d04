# Written by hand: each listed workflow's best claim key, and per-workflow locks (issue 16,
# session 18, s18-wfhead).
#
# A workflow filter matching many workflows that are not at the claim index's head made one
# index descent per matching workflow (~130 ms a claim at 50,000). `core_claimworkflow` now keeps
# per workflow the claim key of its best claimable job in each claim order: `skey` (serial:
# -priority, packing, -wall; over its single-node, single-rank jobs; NULL if none) and `mkey`
# (MPI: -priority, -num_nodes, -wall; over all of them), as arrays so that their order is the
# claim order; the claim reads the first matching workflows by key from the new indexes and
# descends only into those (balsam/core/claim_sql.py). A stored key is never later in the claim
# order than the workflow's best claimable job ("optimistic"): writers lower it (`least`), and
# only `core_claimworkflow_refresh` raises it or drops the name, from a snapshot taken after it
# holds the workflow's lock.
#
# The lock: one global advisory lock before (migration 0021: writers shared, the pruner
# exclusive for its whole statement, ~25 ms at 50,000 names); now 128 buckets of workflows
# (`hashtext(workflow) & 127` under the same key): a writer holds its statements' buckets shared
# to its commit, a refresh (the claimer after its claim, the sweep's prune) tries them exclusive
# (never waits; a bucket with a writer in flight is skipped) and reads the jobs in its next
# statement, whose snapshot sees every such writer committed. Writers lower keys at their commit
# (queued in the unlogged `core_claimworkflow_lower`, applied by one deferred trigger in workflow
# order): an upsert per statement held key rows to the commit, and transactions lowering keys of
# two workflows in opposite orders deadlocked.
# The sweep's prune refreshes one bucket's names at a time, so it holds one bucket, not every
# writer.
#
# A claim (and the prune) queue their refresh in `core_claimworkflow_refresh` (unlogged); a
# deferred constraint trigger runs it at the transaction's commit: the buckets are then held
# only for the commit, and nothing after it in that transaction can wait for another
# refresher's bucket (two claimers that each refreshed, then released a job of a workflow in
# the other's bucket, would deadlock).

from django.db import migrations

CLAIMABLE = "state IN ('PREPROCESSED', 'RESTART_READY') AND session_id IS NULL"
SERIAL = "num_nodes = 1 AND ranks_per_node = 1"
LOCK_KEY = 0x434C4D57  # b"CLMW": balsam.core.claim_sql.WORKFLOWS_LOCK_KEY
BUCKETS = 127  # balsam.core.claim_sql.LOCK_BUCKETS - 1: the mask
SKEY = "ARRAY[-priority::bigint, node_packing_count, -wall_time_minutes::bigint]"
MKEY = "ARRAY[-priority::bigint, -num_nodes::bigint, -wall_time_minutes::bigint]"

_SQL = f"""
ALTER TABLE core_claimworkflow ADD COLUMN skey bigint[], ADD COLUMN mkey bigint[];
UPDATE core_claimworkflow w SET
  skey = (SELECT min({SKEY}) FROM core_balsamjob j
          WHERE j.workflow = w.workflow AND {CLAIMABLE} AND {SERIAL}),
  mkey = (SELECT min({MKEY}) FROM core_balsamjob j WHERE j.workflow = w.workflow AND {CLAIMABLE});
DELETE FROM core_claimworkflow WHERE mkey IS NULL;
CREATE INDEX claimworkflow_skey ON core_claimworkflow (skey, workflow) WHERE skey IS NOT NULL;
CREATE INDEX claimworkflow_mkey ON core_claimworkflow (mkey, workflow);

CREATE UNLOGGED TABLE core_claimworkflow_lower (
  workflow text NOT NULL, skey bigint[], mkey bigint[] NOT NULL);
CREATE UNLOGGED TABLE core_claimworkflow_lower_at (id integer NOT NULL);

CREATE OR REPLACE FUNCTION core_claimworkflow_add() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF EXISTS (SELECT 1 FROM new_rows WHERE {CLAIMABLE}) THEN
    PERFORM pg_advisory_xact_lock_shared({LOCK_KEY}, b) FROM (
      SELECT DISTINCT hashtext(workflow) & {BUCKETS} AS b
      FROM (SELECT DISTINCT workflow FROM new_rows WHERE {CLAIMABLE}) w ORDER BY 1) x;
    -- The key of each workflow's rows is the best of each component apart (scalar aggregates:
    -- building an array per row cost ~2 us a row on a 100,000-job COPY): never later than the
    -- best row's. Queued (an append: no writer waits for another here), applied at commit by
    -- one sorted upsert (core_claimworkflow_lower_at_commit): an upsert here held the key
    -- rows to the commit, so two transactions lowering keys of two workflows in opposite
    -- orders deadlocked
    INSERT INTO core_claimworkflow_lower (workflow, skey, mkey)
    SELECT workflow,
           CASE WHEN max(priority) FILTER (WHERE {SERIAL}) IS NOT NULL THEN ARRAY[
             -max(priority) FILTER (WHERE {SERIAL})::bigint,
             min(node_packing_count) FILTER (WHERE {SERIAL}),
             -max(wall_time_minutes) FILTER (WHERE {SERIAL})::bigint] END,
           ARRAY[-max(priority)::bigint, -max(num_nodes)::bigint,
                 -max(wall_time_minutes)::bigint]
    FROM new_rows WHERE {CLAIMABLE} GROUP BY workflow;
    -- one per transaction (committed ones are gone: their trigger deletes them)
    INSERT INTO core_claimworkflow_lower_at (id)
    SELECT 1 WHERE NOT EXISTS (SELECT 1 FROM core_claimworkflow_lower_at);
  END IF;
  RETURN NULL;
END $$;

CREATE FUNCTION core_claimworkflow_lower_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  fresh boolean := current_setting('transaction_isolation') = 'read committed';
BEGIN
  DELETE FROM core_claimworkflow_lower_at;
  -- the transaction's queued keys (others' are not visible: uncommitted), in one statement
  -- in workflow order: key rows are locked in one order, only while transactions commit.
  -- Its snapshot is new, after the triggers' bucket locks (held to the commit): it sees every
  -- refresh of these buckets committed. Skipped when the stored key is already as early only
  -- if the snapshot is fresh (READ COMMITTED): an older one (REPEATABLE READ) may miss a
  -- refresh that raised or dropped it; the upsert then fails to serialize (retried) or
  -- re-adds the dropped name
  WITH q AS (DELETE FROM core_claimworkflow_lower RETURNING workflow, skey, mkey)
  INSERT INTO core_claimworkflow AS w (workflow, skey, mkey)
  SELECT n.workflow, n.skey, n.mkey FROM (
      SELECT workflow, min(skey) AS skey, min(mkey) AS mkey FROM q GROUP BY workflow) n
  WHERE NOT (fresh AND EXISTS (
      SELECT 1 FROM core_claimworkflow o WHERE o.workflow = n.workflow
      AND o.mkey <= n.mkey AND (n.skey IS NULL OR o.skey <= n.skey)))
  ORDER BY n.workflow
  ON CONFLICT (workflow) DO UPDATE
    SET skey = least(w.skey, excluded.skey), mkey = least(w.mkey, excluded.mkey);
  RETURN NULL;
END $$;

CREATE CONSTRAINT TRIGGER claimworkflow_lower_at_commit
  AFTER INSERT ON core_claimworkflow_lower_at DEFERRABLE INITIALLY DEFERRED
  FOR EACH ROW EXECUTE FUNCTION core_claimworkflow_lower_at_commit();

CREATE FUNCTION core_claimworkflow_refresh(names text[]) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
  held text[];
  changed integer;
BEGIN
  -- the jobs are read with a snapshot taken after the locks only in READ COMMITTED: an older
  -- one (REPEATABLE READ) misses writers committed before the locks; the keys stay early
  IF current_setting('transaction_isolation') <> 'read committed' THEN
    RETURN 0;
  END IF;
  SELECT array_agg(w ORDER BY w) INTO held FROM (SELECT DISTINCT w FROM unnest(names) w) x
  WHERE pg_try_advisory_xact_lock({LOCK_KEY}, hashtext(w) & {BUCKETS});
  IF held IS NULL THEN
    RETURN 0;
  END IF;
  -- a new statement: its snapshot sees every writer of the held buckets committed. (ORDER BY
  -- workflow first: the order of job_claim_wf_*, so the generic plan cannot prefer the claim
  -- index and walk it from the head to the workflow's first row)
  WITH k AS MATERIALIZED (
    SELECT h.w,
      (SELECT {SKEY} FROM core_balsamjob WHERE workflow = h.w AND {CLAIMABLE} AND {SERIAL}
       ORDER BY workflow, priority DESC, node_packing_count, wall_time_minutes DESC
       LIMIT 1) AS s,
      (SELECT {MKEY} FROM core_balsamjob WHERE workflow = h.w AND {CLAIMABLE}
       ORDER BY workflow, priority DESC, num_nodes DESC, wall_time_minutes DESC LIMIT 1) AS m
    FROM unnest(held) h(w)
  ), d AS (
    DELETE FROM core_claimworkflow c USING k WHERE c.workflow = k.w AND k.m IS NULL
    RETURNING 1
  ), u AS (
    UPDATE core_claimworkflow c SET skey = k.s, mkey = k.m FROM k
    WHERE c.workflow = k.w AND k.m IS NOT NULL
      AND (c.skey IS DISTINCT FROM k.s OR c.mkey IS DISTINCT FROM k.m)
    RETURNING 1
  )
  SELECT (SELECT count(*) FROM d) + (SELECT count(*) FROM u) INTO changed;
  RETURN changed;
END $$;

CREATE UNLOGGED TABLE core_claimworkflow_refresh (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, names text[] NOT NULL);

CREATE FUNCTION core_claimworkflow_refresh_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM core_claimworkflow_refresh(NEW.names);
  DELETE FROM core_claimworkflow_refresh WHERE id = NEW.id;
  RETURN NULL;
END $$;

CREATE CONSTRAINT TRIGGER claimworkflow_refresh_at_commit
  AFTER INSERT ON core_claimworkflow_refresh DEFERRABLE INITIALLY DEFERRED
  FOR EACH ROW EXECUTE FUNCTION core_claimworkflow_refresh_at_commit();
"""

_REVERSE_SQL = f"""
DROP TABLE core_claimworkflow_lower_at;
DROP TABLE core_claimworkflow_lower;
DROP FUNCTION core_claimworkflow_lower_at_commit();
DROP TABLE core_claimworkflow_refresh;
DROP FUNCTION core_claimworkflow_refresh_at_commit();
DROP FUNCTION core_claimworkflow_refresh(text[]);
CREATE OR REPLACE FUNCTION core_claimworkflow_add() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF EXISTS (SELECT 1 FROM new_rows WHERE {CLAIMABLE}) THEN
    PERFORM pg_advisory_xact_lock_shared({LOCK_KEY});
    INSERT INTO core_claimworkflow (workflow)
    SELECT DISTINCT workflow FROM new_rows WHERE {CLAIMABLE}
    ON CONFLICT DO NOTHING;
  END IF;
  RETURN NULL;
END $$;
DROP INDEX claimworkflow_skey;
DROP INDEX claimworkflow_mkey;
ALTER TABLE core_claimworkflow DROP COLUMN skey, DROP COLUMN mkey;
"""


class Migration(migrations.Migration):

    dependencies = [
        ("core", "0021_claimable_workflows"),
    ]

    operations = [
        migrations.RunSQL(_SQL, _REVERSE_SQL),
    ]
