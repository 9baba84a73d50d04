# Written by hand: the planner's backlog by shape, kept by the database itself.
#
# The planner needs the runnable backlog (jobs in PREPROCESSED, RESTART_READY, READY or STAGED_IN
# held by no session) as counts per shape (serial?, num_nodes, node_packing_count,
# wall_time_minutes, priority). A GROUP BY over the job table reads every backlog row: ~0.4-0.9 s
# at 1,000,000 jobs. Instead, statement-level triggers on the job table append one signed count
# per shape a statement moved into or out of the backlog to core_backlogshape (nothing for the
# statements that move no job in or out, e.g. RUNNING -> RUN_DONE). Rows are only ever appended
# by writers, so concurrent launchers never wait on a shared counter row (and cannot deadlock on
# two); the planner adds the rows up and folds them into one row per shape
# (balsam.service.planner.backlog). Every writer is covered (ORM, COPY, the CLI's and launchers'
# plain SQL, TRUNCATE), and the counts commit or roll back with the rows they count.

from django.db import migrations

BACKLOG = "('PREPROCESSED', 'RESTART_READY', 'READY', 'STAGED_IN')"
SHAPE = "num_nodes = 1 AND ranks_per_node = 1, num_nodes, node_packing_count, wall_time_minutes, priority"
COLS = "serial, num_nodes, node_packing_count, wall_time_minutes, priority, jobs"

_SQL = f"""
CREATE TABLE core_backlogshape (
    serial boolean NOT NULL,
    num_nodes integer NOT NULL,
    node_packing_count integer NOT NULL,
    wall_time_minutes integer NOT NULL,
    priority integer NOT NULL,
    jobs bigint NOT NULL
);

CREATE FUNCTION core_backlogshape_delta() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'INSERT' THEN
    INSERT INTO core_backlogshape ({COLS})
    SELECT {SHAPE}, count(*) FROM new_rows
    WHERE state IN {BACKLOG} AND session_id IS NULL GROUP BY 1, 2, 3, 4, 5;
  ELSIF TG_OP = 'DELETE' THEN
    INSERT INTO core_backlogshape ({COLS})
    SELECT {SHAPE}, -count(*) FROM old_rows
    WHERE state IN {BACKLOG} AND session_id IS NULL GROUP BY 1, 2, 3, 4, 5;
  ELSE
    INSERT INTO core_backlogshape ({COLS})
    SELECT s, n, p, w, pr, sum(d) FROM (
        SELECT {SHAPE}, 1 FROM new_rows WHERE state IN {BACKLOG} AND session_id IS NULL
        UNION ALL
        SELECT {SHAPE}, -1 FROM old_rows WHERE state IN {BACKLOG} AND session_id IS NULL
    ) AS moved (s, n, p, w, pr, d)
    GROUP BY 1, 2, 3, 4, 5 HAVING sum(d) <> 0;
  END IF;
  RETURN NULL;
END $$;

CREATE FUNCTION core_backlogshape_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  DELETE FROM core_backlogshape;
  RETURN NULL;
END $$;

CREATE TRIGGER backlogshape_insert AFTER INSERT ON core_balsamjob
  REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION core_backlogshape_delta();
CREATE TRIGGER backlogshape_update AFTER UPDATE ON core_balsamjob
  REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION core_backlogshape_delta();
CREATE TRIGGER backlogshape_delete AFTER DELETE ON core_balsamjob
  REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION core_backlogshape_delta();
CREATE TRIGGER backlogshape_truncate AFTER TRUNCATE ON core_balsamjob
  FOR EACH STATEMENT EXECUTE FUNCTION core_backlogshape_truncate();

INSERT INTO core_backlogshape ({COLS})
SELECT {SHAPE}, count(*) FROM core_balsamjob
WHERE state IN {BACKLOG} AND session_id IS NULL GROUP BY 1, 2, 3, 4, 5;
"""

_REVERSE_SQL = """
DROP TRIGGER backlogshape_insert ON core_balsamjob;
DROP TRIGGER backlogshape_update ON core_balsamjob;
DROP TRIGGER backlogshape_delete ON core_balsamjob;
DROP TRIGGER backlogshape_truncate ON core_balsamjob;
DROP FUNCTION core_backlogshape_delta();
DROP FUNCTION core_backlogshape_truncate();
DROP TABLE core_backlogshape;
"""


class Migration(migrations.Migration):

    dependencies = [
        ("core", "0011_pyfunc_payloads"),
    ]

    operations = [
        migrations.RunSQL(_SQL, _REVERSE_SQL),
    ]
