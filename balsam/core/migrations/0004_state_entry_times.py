# Written by hand (checked by `makemigrations --check`): the entry time of every state, so the
# analytics read durations off single rows instead of pairing events (issue 6).
#
# - core_balsamjob.state_since: when the job entered its current state (NULL: at created_at).
# - core_jobevent.entered_at: when the job entered the event's from_state; with ``timestamp`` it
#   is the whole visit of that state. core_jobevent.nodes: on an event leaving RUNNING, the nodes
#   (fraction, with packing) the run occupied.
# - run_end: the events ending a run, by time (runtimes and utilization of a window);
#   error_event: the failures, by time (error reports read ~5% of the events, not all of them).
#   Each is written only for the events it holds.
#
# Both are written by balsam.core.lifecycle in the statement that changes the state. Rows written
# before this migration are filled in here (BACKFILL_SQL: one pass with a window function; instant
# on a fresh database).

from django.db import migrations, models

NODES_SQL = ("CASE WHEN j.num_nodes = 1 AND j.ranks_per_node = 1 "
             "THEN 1.0 / j.node_packing_count ELSE j.num_nodes END")

BACKFILL_SQL = f"""
UPDATE core_jobevent e SET entered_at = p.entered,
    nodes = CASE WHEN e.from_state = 'RUNNING' THEN p.nodes END
FROM (
    SELECT e.id, coalesce(lag(e.timestamp) OVER (PARTITION BY e.job_id ORDER BY e.id),
                          j.created_at) AS entered, {NODES_SQL} AS nodes
    FROM core_jobevent e JOIN core_balsamjob j ON j.job_id = e.job_id
) p
WHERE e.id = p.id AND e.entered_at IS NULL;
UPDATE core_balsamjob j SET state_since = last.timestamp
FROM (
    SELECT DISTINCT ON (job_id) job_id, timestamp, to_state FROM core_jobevent
    ORDER BY job_id, id DESC
) last
WHERE j.job_id = last.job_id AND j.state = last.to_state AND j.state_since IS NULL;
"""


class Migration(migrations.Migration):

    dependencies = [
        ("core", "0003_queuedlaunch_service"),
    ]

    operations = [
        migrations.AddField(
            model_name="balsamjob",
            name="state_since",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="jobevent",
            name="entered_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="jobevent",
            name="nodes",
            field=models.FloatField(blank=True, null=True),
        ),
        migrations.AddIndex(
            model_name="jobevent",
            index=models.Index(condition=models.Q(("from_state", "RUNNING")), fields=["timestamp"],
                               name="run_end"),
        ),
        migrations.AddIndex(
            model_name="jobevent",
            index=models.Index(condition=models.Q(("to_state__in", ["RUN_ERROR", "FAILED"])),
                               fields=["timestamp"], name="error_event"),
        ),
        migrations.RunSQL(BACKFILL_SQL, reverse_sql=migrations.RunSQL.noop),
    ]
