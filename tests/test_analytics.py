"""balsam.core.analytics against a synthetic history with known answers.

Seven jobs with hand-written events at known times (seconds after T0), three launcher sessions.
Every expected number below is worked out by hand from this table:

  A alpha   sim  serial/4   0 created, 10 PREPROCESSED, 60 RUNNING (s7), 160 RUN_DONE, 170 JOB_FINISHED
  B alpha   sim  serial/4   0, 10 PREPROCESSED, 60 RUNNING (s7), 260 RUN_DONE, 290 JOB_FINISHED
  C alpha-2 mpi  8 nodes    0, 20 PREPROCESSED, 120 RUNNING (s8), 420 RUN_ERROR "exit code 1",
                            430 RESTART_READY, 480 RUNNING (s8), 790 RUN_DONE, 795 JOB_FINISHED
  D beta    sim  serial/1   0, 30 PREPROCESSED, 200 RUNNING (s17), 230 RUN_ERROR "exit code 2",
                            240 FAILED "gave up"
  E beta    sim  2 nodes    100, 110 PREPROCESSED, 300 RUNNING (s17) ... still running
  F beta    sim  serial/1   500 created, no event
  G alpha   sim  serial/4   0, 10 PREPROCESSED, 400 RUNNING (s7), 460 RUN_ERROR "exit code 1",
                            470 FAILED "exit code 1"
"""
from __future__ import annotations

import datetime
import importlib

import pytest

from balsam.core import analytics, schema
from balsam.core.analytics import Filters

T0 = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)


def at(seconds: float) -> datetime.datetime:
    return T0 + datetime.timedelta(seconds=seconds)


def jid(letter: str) -> str:
    return f"00000000-0000-0000-0000-0000000000{ord(letter) - ord('A') + 1:02d}"


JOBS = {  # letter: (workflow, app, num_nodes, ranks_per_node, packing, created, state)
    "A": ("alpha", "sim", 1, 1, 4, 0, "JOB_FINISHED"),
    "B": ("alpha", "sim", 1, 1, 4, 0, "JOB_FINISHED"),
    "C": ("alpha-2", "mpi", 8, 4, 1, 0, "JOB_FINISHED"),
    "D": ("beta", "sim", 1, 1, 1, 0, "FAILED"),
    "E": ("beta", "sim", 2, 1, 1, 100, "RUNNING"),
    "F": ("beta", "sim", 1, 1, 1, 500, "CREATED"),
    "G": ("alpha", "sim", 1, 1, 4, 0, "FAILED"),
}
S7, S8, S17 = "launcher session 7 on h1", "launcher session 8 on h2", "serial-mode session 17"
EVENTS = {  # letter: [(time, to_state, message)]
    "A": [(10, "PREPROCESSED", ""), (60, "RUNNING", S7), (160, "RUN_DONE", ""),
          (170, "JOB_FINISHED", "")],
    "B": [(10, "PREPROCESSED", ""), (60, "RUNNING", S7), (260, "RUN_DONE", ""),
          (290, "JOB_FINISHED", "")],
    "C": [(20, "PREPROCESSED", ""), (120, "RUNNING", S8), (420, "RUN_ERROR", "exit code 1"),
          (430, "RESTART_READY", ""), (480, "RUNNING", S8), (790, "RUN_DONE", ""),
          (795, "JOB_FINISHED", "")],
    "D": [(30, "PREPROCESSED", ""), (200, "RUNNING", S17), (230, "RUN_ERROR", "exit code 2"),
          (240, "FAILED", "gave up")],
    "E": [(110, "PREPROCESSED", ""), (300, "RUNNING", S17)],
    "F": [],
    "G": [(10, "PREPROCESSED", ""), (400, "RUNNING", S7), (460, "RUN_ERROR", "exit code 1"),
          (470, "FAILED", "exit code 1")],
}
SESSIONS = {7: (50, 500), 8: (100, None), 17: (150, None)}
WINDOW = Filters(since=at(0), until=at(800))


BACKFILL_SQL = importlib.import_module("balsam.core.migrations.0004_state_entry_times").BACKFILL_SQL


@pytest.fixture(params=["recorded", "backfilled"])
def history(request, cursor):
    """The table above as the state writer records it (each event with the time its job entered
    ``from_state`` and a run's end with its nodes; each job with the time it entered its state),
    or as bare events filled in afterwards by migration 0004's backfill (a database from before
    it): every answer must be the same."""
    recorded = request.param == "recorded"
    for letter, (wf, app, nodes, rpn, pack, created, state) in JOBS.items():
        row = schema.new_job_row({"workflow": wf, "application": app, "num_nodes": nodes,
                                  "ranks_per_node": rpn, "node_packing_count": pack,
                                  "name": letter, "state": state})
        row.update(job_id=jid(letter), created_at=at(created), data="{}", parameters="{}", tags="{}")
        cols = list(row)
        cursor.execute(f"INSERT INTO {schema.JOB_TABLE} ({', '.join(cols)}) VALUES "
                       f"({', '.join(['%s'] * len(cols))})", [row[c] for c in cols])
        prev, entered = "CREATED", created
        weight = 1 / pack if nodes == 1 and rpn == 1 else nodes
        for t, to_state, msg in EVENTS[letter]:
            extra = [at(entered), weight if prev == "RUNNING" else None] if recorded else [None, None]
            cursor.execute(f"INSERT INTO {schema.EVENT_TABLE} (job_id, timestamp, from_state, "
                           "to_state, message, entered_at, nodes) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                           [jid(letter), at(t), prev, to_state, msg] + extra)
            prev, entered = to_state, t
        if recorded:
            cursor.execute(f"UPDATE {schema.JOB_TABLE} SET state_since = %s WHERE job_id = %s",
                           [at(entered), jid(letter)])
    if not recorded:
        cursor.execute(BACKFILL_SQL)
    for sid, (start, end) in SESSIONS.items():
        cursor.execute(f"INSERT INTO {schema.SESSION_TABLE} (id, hostname, pid, job_mode, label, "
                       "scheduler_id, num_nodes, started_at, heartbeat, lease_seconds, ended_at, "
                       "end_reason) VALUES (%s, 'h', 1, 'mpi', '', '', 8, %s, %s, 60, %s, '')",
                       [sid, at(start), at(start), None if end is None else at(end)])
    return cursor


def test_throughput_counts_run_done_and_finished_per_bucket_and_cumulative(history):
    tp = analytics.throughput(history, WINDOW, bucket_seconds=100)
    assert tp.buckets.count == 8 and tp.buckets.start == at(0)
    assert tp.buckets.times[:2] == [at(0), at(100)]
    assert tp.run_done == [0, 1, 1, 0, 0, 0, 0, 1]
    assert tp.finished == [0, 1, 1, 0, 0, 0, 0, 1]
    assert tp.run_done_cumulative == [0, 1, 2, 2, 2, 2, 2, 3]


def test_throughput_without_window_spans_first_to_last_event(history):
    tp = analytics.throughput(history, bucket_seconds=100)
    assert tp.buckets.start == at(10) and tp.buckets.count == 8  # 10 .. 795
    assert sum(tp.run_done) == 3 and tp.finished == [0, 1, 1, 0, 0, 0, 0, 1]
    assert analytics.throughput(history).buckets.seconds == 15  # 785 s in at most 60 buckets


def test_utilization_counts_nodes_with_packing_at_bucket_ends_and_time_averaged(history):
    ut = analytics.utilization(history, WINDOW, bucket_seconds=100)
    assert ut.running_tasks == [2, 2, 1, 2, 2, 2, 2, 1]
    assert ut.busy_nodes == [0.5, 8.25, 8, 10, 10, 10, 10, 2]
    assert ut.avg_running_tasks == pytest.approx([0.8, 2.4, 1.9, 2, 2, 2, 2, 1.9])
    assert ut.avg_busy_nodes == pytest.approx([0.2, 6.8, 8.45, 10, 5.35, 10, 10, 9.2])


def test_utilization_of_a_window_starts_from_the_jobs_already_running(history):
    ut = analytics.utilization(history, Filters(since=at(250), until=at(450)), bucket_seconds=100)
    # at 250: B (0.25) and C (8) run; 260 B ends; 300 E starts (2); 400 G (0.25); 420 C ends
    assert ut.running_tasks == [2, 2]
    assert ut.busy_nodes == [10, 2.25]
    assert ut.avg_busy_nodes == pytest.approx([(0.25 * 10 + 800 + 2 * 50) / 100,
                                               (8 * 70 + 200 + 0.25 * 50) / 100])


def test_errors_per_bucket_and_grouped_by_message_with_an_example_job(history):
    er = analytics.errors(history, WINDOW, bucket_seconds=100)
    assert er.counts == [0, 0, 2, 0, 3, 0, 0, 0]
    assert [(g.message, g.count, g.example_job_id, g.last_seen) for g in er.groups] == [
        ("exit code 1", 3, jid("C"), at(470)),
        ("gave up", 1, jid("D"), at(240)),
        ("exit code 2", 1, jid("D"), at(230)),
    ]
    assert len(analytics.errors(history, WINDOW, top=1).groups) == 1


def test_runtimes_pair_each_running_with_the_next_end(history):
    runs = analytics.job_runtimes(history)
    assert [(r.job_id, r.seconds, r.end_state) for r in runs] == [
        (jid("C"), 310, "RUN_DONE"), (jid("C"), 300, "RUN_ERROR"), (jid("B"), 200, "RUN_DONE"),
        (jid("A"), 100, "RUN_DONE"), (jid("G"), 60, "RUN_ERROR"), (jid("D"), 30, "RUN_ERROR")]
    assert runs[0].start == at(480) and runs[0].end == at(790)
    assert len(analytics.job_runtimes(history, limit=2)) == 2
    st = analytics.runtime_stats(history)
    assert (st.count, st.p50, st.max) == (6, 150, 310)
    assert st.mean == pytest.approx(1000 / 6) and st.p95 == pytest.approx(307.5)


def test_runtimes_in_a_window_are_the_runs_ended_in_it(history):
    st = analytics.runtime_stats(history, Filters(since=at(250), until=at(800)))
    assert (st.count, st.mean, st.p50, st.max) == (4, 217.5, 250, 310)
    empty = analytics.runtime_stats(history, Filters(since=at(900)))
    assert (empty.count, empty.mean, empty.p95) == (0, None, None)


def test_state_times_total_per_state_clipped_to_the_window(history):
    st = analytics.state_times(history, WINDOW)
    totals = {s: v.total_seconds for s, v in st.items() if v.total_seconds}
    assert totals == pytest.approx({
        "CREATED": 390, "PREPROCESSED": 950, "RUNNING": 1500, "RUN_DONE": 45, "RUN_ERROR": 30,
        "RESTART_READY": 50, "JOB_FINISHED": 1145, "FAILED": 890})
    assert (st["RUNNING"].visits_ended, st["RUNNING"].current) == (6, 1)
    assert st["RUNNING"].mean_seconds == pytest.approx(1500 / 7)
    assert st["RUN_DONE"].mean_seconds == pytest.approx(15)
    assert st["READY"].mean_seconds is None
    narrow = analytics.state_times(history, Filters(since=at(100), until=at(200)))
    # RUNNING in [100, 200): A 60, B 100, C 80
    assert narrow["RUNNING"].total_seconds == pytest.approx(240)


def test_filters_by_workflow_exact_and_substring_app_and_session(history):
    def runs(f: Filters) -> set[str]:
        return {r.job_id for r in analytics.job_runtimes(history, f)}

    assert runs(Filters(workflow="alpha")) == {jid("A"), jid("B"), jid("G")}
    assert runs(Filters(workflow_contains="alpha")) == {jid(x) for x in "ABCG"}
    assert runs(Filters(workflow_contains="%")) == set()
    assert runs(Filters(app="mpi")) == {jid("C")}
    assert runs(Filters(session=7)) == {jid("A"), jid("B"), jid("G")}
    assert runs(Filters(session=17)) == {jid("D")}  # E still runs
    ut = analytics.utilization(history, Filters(app="mpi", since=at(0), until=at(800)), bucket_seconds=100)
    assert ut.busy_nodes == [0, 8, 8, 8, 8, 8, 8, 0]
    assert analytics.state_counts(history, Filters(workflow="beta")) == {
        "CREATED": 1, "RUNNING": 1, "FAILED": 1}


def test_session_filter_narrows_the_window_to_the_session_lifetime(history):
    tp = analytics.throughput(history, Filters(session=7), bucket_seconds=100)
    assert (tp.buckets.start, tp.buckets.count) == (at(50), 5)
    assert tp.run_done == [0, 1, 1, 0, 0]
    st = analytics.runtime_stats(history, Filters(session=7))
    assert (st.count, st.mean, st.p50, st.max) == (3, 120, 100, 200)
    with pytest.raises(analytics.NotFound):
        analytics.throughput(history, Filters(session=99))


def test_reports_on_an_empty_database(cursor):
    assert analytics.throughput(cursor) is None
    assert analytics.utilization(cursor) is None
    assert analytics.errors(cursor) is None
    assert analytics.runtime_stats(cursor).count == 0
    assert analytics.summary(cursor)["total"] == 0


def test_summary_gives_counts_recent_rate_runtime_nodes_and_errors(history):
    s = analytics.summary(history, Filters(until=at(800)), recent_seconds=400)
    assert s["counts"] == {"CREATED": 1, "RUNNING": 1, "JOB_FINISHED": 3, "FAILED": 2}
    assert s["total"] == 7
    assert s["recent"]["run_done"] == 1 and s["recent"]["finished"] == 1
    assert s["recent"]["finished_per_hour"] == pytest.approx(9)
    assert s["recent"]["avg_busy_nodes"] == pytest.approx((5.35 + 10 + 10 + 9.2) / 4)
    assert (s["running_tasks"], s["busy_nodes"]) == (1, 2)
    assert s["runtime"]["count"] == 6 and s["runtime"]["p95"] == pytest.approx(307.5)
    assert [(e["message"], e["example_job_id"]) for e in s["errors"]][0] == ("exit code 1", jid("C"))


def test_classic_helpers_keep_their_shapes(history):
    times, counts = analytics.throughput_report(cursor=history)
    assert times == [at(160), at(260), at(790)] and counts == [1, 2, 3]
    times, running = analytics.utilization_report(cursor=history)
    assert running == [1, 2, 3, 2, 3, 2, 1, 2, 3, 2, 1, 2, 1]
    assert times[:3] == [at(60), at(60), at(120)]
    times, counts = analytics.error_report(cursor=history)  # per minute from the first event (10)
    assert dict((i, n) for i, n in enumerate(counts) if n) == {3: 2, 6: 1, 7: 2}
    jt = analytics.process_job_times(cursor=history)
    assert jt["CREATED"] == [at(0)] * 5 + [at(100), at(500)]
    assert jt["RUN_DONE"] == [at(160), at(260), at(790)]
    assert analytics.process_job_times(None, "FAILED", cursor=history) == {"FAILED": [at(240), at(470)]}


def test_classic_helpers_take_a_django_queryset(history):
    from balsam.core import models

    qs = models.BalsamJob.objects.filter(workflow="alpha")
    times, counts = analytics.throughput_report(qs)
    assert times == [at(160), at(260)] and counts == [1, 2]
    assert analytics.process_job_times(qs, "FAILED") == {"FAILED": [at(470)]}
    times, running = analytics.utilization_report(qs)
    assert running == [1, 2, 1, 0, 1, 0]
    times, counts = analytics.error_report(qs.filter(name="G"))
    assert sum(counts) == 2


def test_classic_helpers_are_importable_from_models_where_classic_scripts_find_them(history):
    from balsam.core import analytics_classic, models
    from balsam.core.models import (  # noqa: F401
        error_report,
        from_time_string,
        get_time_string,
        process_job_times,
        throughput_report,
        utilization_report,
    )

    assert models.utilization_report is analytics_classic.utilization_report
    times, counts = throughput_report(models.BalsamJob.objects.filter(workflow="alpha"))
    assert times == [at(160), at(260)] and counts == [1, 2]
    assert from_time_string(get_time_string(at(160))) == at(160)
