# Written by hand: the names of the workflows that have (or had) claimable jobs, kept by the
# database (issue 16, session 17, s17-wfclaim).
#
# A workflow filter's claim listed the claimable workflows by a loose scan of `job_claim_wf_*`:
# one index descent per claimable workflow, ~30 ms a claim with 10,000 claimable workflows,
# ~170 ms with 50,000 (campaigns of one workflow per parameter point). The claim now reads this
# table instead (`workflow LIKE ...` over short names, then one descent per *matching*
# workflow). Statement-level triggers add a workflow when a statement makes one of its jobs
# claimable (insert, COPY, release, retry); nothing is written when jobs stop being claimable
# (the claim, RUNNING, the end), so the hot path writes nothing here; a TRUNCATE empties it.
# The table is therefore a superset: names whose jobs were all claimed stay until
# `claim_sql.prune_workflows` (run by the sweep) drops them. Pruning is safe against a
# concurrent writer through an advisory lock: the triggers hold it shared from before their
# insert to their commit, the pruner takes it exclusive (try only, never waits) and checks the
# jobs with a snapshot taken after.

from django.db import migrations

CLAIMABLE = "state IN ('PREPROCESSED', 'RESTART_READY') AND session_id IS NULL"
LOCK_KEY = 0x434C4D57  # b"CLMW": balsam.core.claim_sql.WORKFLOWS_LOCK_KEY

_SQL = f"""
CREATE TABLE core_claimworkflow (workflow text PRIMARY KEY);

CREATE FUNCTION core_claimworkflow_add() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF EXISTS (SELECT 1 FROM new_rows WHERE {CLAIMABLE}) THEN
    PERFORM pg_advisory_xact_lock_shared({LOCK_KEY});
    INSERT INTO core_claimworkflow (workflow)
    SELECT DISTINCT workflow FROM new_rows WHERE {CLAIMABLE}
    ON CONFLICT DO NOTHING;
  END IF;
  RETURN NULL;
END $$;

CREATE FUNCTION core_claimworkflow_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  DELETE FROM core_claimworkflow;
  RETURN NULL;
END $$;

CREATE TRIGGER claimworkflow_insert AFTER INSERT ON core_balsamjob
  REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION core_claimworkflow_add();
CREATE TRIGGER claimworkflow_update AFTER UPDATE ON core_balsamjob
  REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION core_claimworkflow_add();
CREATE TRIGGER claimworkflow_truncate AFTER TRUNCATE ON core_balsamjob
  FOR EACH STATEMENT EXECUTE FUNCTION core_claimworkflow_truncate();

INSERT INTO core_claimworkflow (workflow)
SELECT DISTINCT workflow FROM core_balsamjob WHERE {CLAIMABLE};
"""

_REVERSE_SQL = """
DROP TRIGGER claimworkflow_insert ON core_balsamjob;
DROP TRIGGER claimworkflow_update ON core_balsamjob;
DROP TRIGGER claimworkflow_truncate ON core_balsamjob;
DROP FUNCTION core_claimworkflow_add();
DROP FUNCTION core_claimworkflow_truncate();
DROP TABLE core_claimworkflow;
"""


class Migration(migrations.Migration):

    dependencies = [
        ("core", "0020_job_claim_wf"),
    ]

    operations = [
        migrations.RunSQL(_SQL, _REVERSE_SQL),
    ]
