#!/usr/bin/env bash
# Set up .venv and run the whole test suite (tiny random-weight checkpoints, CPU, offline).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# two workers, each test file whole in one (its module fixtures, servers and Ray cluster started once); much of
# the suite waits on subprocesses and servers, so two workers finish it sooner even on two cores
exec .venv/bin/python -m pytest -q -n "${PYTEST_WORKERS:-2}" --dist loadfile "$@" tests
