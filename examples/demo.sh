#!/usr/bin/env bash
# Balsam end to end on this machine: install into ./.venv, create a database with its own
# PostgreSQL server, register an application, add jobs (from the CLI and from Python), link them
# into a small graph, run them with a launcher, and show the results.
# Needs only Python >= 3.9 and a C compiler.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e .
export PATH="$PWD/.venv/bin:$PATH"

DEMO="${BALSAM_DEMO_DIR:-/tmp/balsam-demo-$(id -un)}"
if [ -d "$DEMO/db" ]; then BALSAM_DB_PATH="$DEMO/db" balsam server --stop >/dev/null 2>&1 || true; fi
rm -rf "$DEMO" && mkdir -p "$DEMO" && chmod 755 "$DEMO"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "balsam init $DEMO/db"
balsam init "$DEMO/db"

step "source balsamactivate db"
# shellcheck disable=SC1091
source balsamactivate "$DEMO/db"
echo "BALSAM_DB_PATH=$BALSAM_DB_PATH"

step "balsam app: register an application"
balsam app --name hello --executable "echo Hello from" --description "prints a greeting"

step "balsam job: add three jobs"
for who in Alice Bob Carol; do
    balsam job --name "greet-$who" --workflow demo --application hello --args "$who" --yes >/dev/null
done
python - <<'PY'
from balsam.core.models import BalsamJob
# The Python API: 5 more jobs in one COPY, then a reduce job that depends on everything.
jobs = BalsamJob.objects.bulk_create(
    [BalsamJob(name=f"sweep-{i}", workflow="demo", application="hello", args=f"sweep point {i}")
     for i in range(5)])
reduce = BalsamJob(name="reduce", workflow="demo", application="hello", args="the reducer",
                   parents=[j.pk for j in BalsamJob.objects.filter(workflow="demo")])
reduce.save()
print(f"added {len(jobs)} sweep jobs and {reduce.cute_id} with {len(reduce.get_parents_by_id())} parents")
PY

step "balsam ls --tree"
balsam ls --tree
step "balsam ls --by-states (before running)"
balsam ls --by-states

step "balsam launcher --consume-all --job-mode serial: run them on this machine"
# Exits by itself once nothing is left to run (the reduce job runs after its 8 parents).
balsam launcher --consume-all --job-mode serial --time-limit-minutes 5

step "balsam ls (after running)"
balsam ls
step "balsam ls --by-states"
balsam ls --by-states
step "output of the reduce job"
cat "$(balsam which --workdir "$(balsam ls --name reduce --format json | python -c 'import json,sys; print(json.load(sys.stdin)[0]["job_id"])')")/reduce.out"
step "balsam ls --history --name reduce"
balsam ls --history --name reduce
step "balsam service: batch jobs submitted for you (local scheduler)"
# The service plans and submits batch jobs for the runnable backlog; on this machine the
# `local` scheduler runs each job script (which starts a launcher) as a process group.
printf 'service: {cycle_seconds: 2}\n' >> "$BALSAM_DB_PATH/settings.yml"
for n in 1 2 3 4 5 6; do
    balsam job --name "item-$n" --workflow service-demo --application hello --args "item $n" --yes >/dev/null
done
balsam service
for _ in $(seq 1 90); do
    left=$(balsam ls --wf service-demo --format json | python -c 'import json,sys; print(sum(j["state"] != "JOB_FINISHED" for j in json.load(sys.stdin)))')
    [ "$left" = 0 ] && break
    sleep 1
done
balsam ls --wf service-demo
balsam ls queues || true
balsam service --status
balsam service --stop
for _ in $(seq 1 30); do  # its batch job's launcher exits once no work can come (no service)
    queues=$(balsam ls queues)
    grep -qE '[|] (queued|running) +[|]' <<<"$queues" || break
    sleep 1
done
balsam ls queues

step "balsam server --status"
balsam server --status

step "done"
echo "The database stays at $DEMO/db (server running). Try:"
echo "  export PATH=\"$PWD/.venv/bin:\$PATH\"; source balsamactivate $DEMO/db; balsam ls --history --name reduce"
echo "  balsam server --stop    # when finished"
