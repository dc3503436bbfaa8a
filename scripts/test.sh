#!/usr/bin/env bash
# Set up .venv and run the whole test suite (tiny random-weight checkpoints, CPU, offline).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@" tests
