"""Every tunable of Balsam in one place, with why it has the value it has.

A DB's ``settings.yml`` may override the launcher values under ``launcher:`` (same names, lower
case). Nothing here is read from the environment.
"""

HEARTBEAT_SECONDS = 10.0
"""How often a launcher renews its session lease."""

LEASE_SECONDS = 60
"""A session whose heartbeat is older than this is presumed dead: its RUNNING jobs become
RUN_TIMEOUT (then the usual retry rules apply). Six missed heartbeats: a launcher stalled by a
slow filesystem or a busy node is not declared dead by one late beat."""

CLAIM_BATCH = 256
"""Most jobs claimed in one statement."""

SERIAL_PREFETCH_PER_SLOT = 4
"""Serial mode keeps this many claimed jobs per free task slot, so workers never wait on the DB."""

STATUS_FLUSH_SECONDS = 0.05
"""Longest a finished task's state waits in memory before it is written (batched)."""

STATUS_WRITERS = 0
"""Serial mode: threads writing the master's state changes, each with its own connection,
sharded by job id (``launcher/status_writers.py``); 0 = one per 512 nodes, 1 to 4 (a master's
one connection caps it near 8,000 tasks/s; docs/architecture.md, "Scale of the serial
master"); 1 = on the master's own connection."""

KILL_CHECK_SECONDS = 0.5
"""How often a launcher asks which of its running jobs a user killed."""

KILL_GRACE_SECONDS = 1.0
"""Between SIGTERM and SIGKILL to a task's process group (user kill; the total stays < 2 s)."""

SHUTDOWN_GRACE_SECONDS = 5.0
"""Between SIGTERM and SIGKILL when the launcher stops (signal, walltime): tasks may checkpoint."""

WALLTIME_MARGIN_SECONDS = 30.0
"""The launcher stops its tasks this long before the allocation ends, to record them."""

IDLE_EXIT_SECONDS = 10.0
"""A non-persistent launcher exits after this long with nothing running and nothing it could
ever run (runnable, or waiting on processing it can do)."""

IDLE_WAIT_SECONDS = 1.0
"""How soon an idle launcher (its master, its transition and transfer workers) first looks again
for work on its own after a look found none; a database notification wakes it at once."""

IDLE_POLL_MAX_SECONDS = 10.0
"""While nothing comes, that fallback look backs off, its gap doubling from
``idle_wait_seconds`` up to this (:class:`balsam.db.idle_poll.IdlePoll`): new runnable jobs,
kills, parents finishing and transfers to do are notified, and so are, since session 21, an
app's scripts changed (migration 0025) and stage-in items done for a job a worker finishes;
a retry's back-off (of a job or a transfer item) running out caps the wait at its moment. The
look only catches what nothing announces (a lost notification). Ten idle launchers then cost
the shared server a few transactions a second, not ~80 (issue 16, session 20). Heartbeats keep
their period."""

PROCESSING_BATCH = 5000
"""Most jobs one processing pass moves per kind of transition."""

MAX_RETRIES = 3
"""How many times a failed run (error with a handler, or timeout) is retried, for jobs whose own
``max_retries`` is -1; a walltime stop of the launcher is not counted (:mod:`balsam.core.retries`)."""

RETRY_BACKOFF_SECONDS = 0.0
"""Wait before a timed-out job is retried automatically, doubled for each further failed run
(at most 64 times this); 0: retry at once."""

SCRIPT_TIMEOUT_SECONDS = 600
"""Longest a preprocess or postprocess script (or error/timeout handler) may run before it is
killed and its job FAILED (classic: 300 s, not configurable)."""

TRANSFER_TIMEOUT_SECONDS = 3600
"""Longest one stage-in or stage-out transfer may take before it is killed and its job FAILED."""

PIN_SINGLE_CORE_TASKS = True
"""Serial mode: a task whose share of its node is one core (``node_packing_count`` = cores) is
pinned to that core; false lets it run on any idle core. A share of several cores is always
pinned to its own cores. Pinned by default: a task that starts threads without being asked
(a BLAS sized to the node, ``OMP_NUM_THREADS`` is set only for ``threads_per_rank`` > 1) then
stays on its core instead of oversubscribing a packed node. Floating can help where the
launcher's own processes share the node's few cores (a pinned task waits for its core while
they use it); on the 2-core benchmark machine the difference was within the noise (10 A/B
rounds, benchmarks/README.md, issue 16, session 13)."""

WARM_HOOKS = True
"""Each transition worker runs site app hooks in forks of one warm runner process
(``processing/warm_hooks.py``: ~20 ms of CPU a hook instead of ~330 ms for a new interpreter).
``false`` runs every hook as a script, a new interpreter each: for a site whose hooks must not
share a parent process (e.g. an app that leaves threads or locks behind at import)."""

TRANSFER_BATCH_ITEMS = 1000
"""Most transfer items (files or directories of jobs) sent together in one batch: one rsync or
scp connection, one Globus task, one round of local copies."""

TRANSFER_BATCHES_PER_ENDPOINT = 2
"""Most batches in flight at once to one remote endpoint (host or Globus collection)."""

TRANSFER_LOCAL_THREADS = 8
"""Threads copying a local batch's items in parallel."""

TRANSFER_MAX_ATTEMPTS = 3
"""Attempts per transfer item before its job fails (a missing source fails at once)."""

TRANSFER_RETRY_BACKOFF_SECONDS = 10.0
"""Wait before a failed item is tried again, doubled for each further attempt."""

TRANSFER_POLL_SECONDS = 10.0
"""Period of status polls of asynchronous batches (Globus tasks)."""

MAX_CONCURRENT_RUNS = 1000
"""Most MPI launches (one per job) an MPI-mode launcher keeps running at once (Cray ALPS allows
1000 concurrent ``aprun`` per batch job)."""

OUTPUT_TAIL_LINES = 16
"""Lines of a failed task's output kept in its RUN_ERROR event message."""

RECONNECT_MAX_SECONDS = 30.0
"""Longest back-off between reconnection attempts while the database is unreachable."""

NOTIFY_CHANNEL = "balsam_jobs"
"""PostgreSQL channel notified (once per statement) when jobs are inserted or change state."""
TRANSFER_NOTIFY_CHANNEL = "balsam_transfers"
"""PostgreSQL channel notified (once per transaction) when a statement leaves jobs in READY or
POSTPROCESSED, the states whose transfer items are made and sent (migration 0015)."""
PROCESSING_NOTIFY_CHANNEL = "balsam_processing"
"""PostgreSQL channel notified (once per transaction) when a statement leaves jobs in a state a
transition worker has a step for (:data:`balsam.core.routing.WORKER_STATES`; migration
0017_processing_notify): the transition workers listen here, not on :data:`NOTIFY_CHANNEL`."""

IDLE_SLOTS_NOTIFY_CHANNEL = "balsam_idle_slots"
"""PostgreSQL channel notified when a serial launcher publishes idle slots (a number above 0
that changed: :func:`balsam.core.idle_slots.publish`): masters holding queued work listen and
give some back at once instead of at their next poll (session 20, s20-tail)."""

SERVICE_CYCLE_SECONDS = 10.0
"""Period of the service's cycle (sync, sweep, process, plan, submit); classic: 10 s."""

MAX_TRANSITION_THREADS = 64
"""Most transition workers one launcher may run (``--num-transition-threads``). Each holds its
own database connection, and the server allows 500 (``balsam.conf``) shared by every launcher,
service, dashboard and CLI command of the DB: 64 leaves room for several launchers, and script
steps wait on files and networks, so more threads on one node rarely help."""

LAUNCHER_TRANSITION_THREADS = 2
"""Transition workers a launcher runs unless ``--num-transition-threads`` says otherwise."""

SERVICE_TRANSITION_THREADS = 2
"""Transition workers (stage-in/out, pre/postprocess scripts) the service runs."""

WAIT_FALLBACK_SECONDS = 5.0
"""Longest ``balsam wait`` goes without re-counting its jobs: notifications wake it at once, but
one lost with a dropped connection must not stall it."""

WAIT_MIN_INTERVAL_SECONDS = 0.2
"""Shortest time between two counts of ``balsam wait``: a busy launcher notifies many times a
second, and each count reads the whole selection."""

WAIT_LOAD_FACTOR = 5.0
"""``balsam wait`` spaces its counts at least this many times a count's own duration apart: a
selection that takes 0.1 s to count (a million jobs, a substring filter) then costs the server
at most a fifth of one core however busy the launchers are."""

PYFUNC_INLINE_BYTES = 64 * 1024
"""Serial mode sends a Python-function task's arguments (and each JSON column of its job) with
the work order, and its outcome back through the worker rank to the master's status batch, when
each is at most this many bytes (:mod:`balsam.core.payloads`); bigger ones go through the warm
worker's own database connection rather than through every MPI message and batch."""
