#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv: the pinned dependencies, then this
# repository's package in editable mode (the `musicgen` command included).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
stamp=.venv/.installed
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
if [ ! -f "$stamp" ] || [ requirements.txt -nt "$stamp" ] || [ requirements-dev.txt -nt "$stamp" ] \
   || [ requirements-nodeps.txt -nt "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "installing dependencies into .venv ..." >&2
  .venv/bin/python -m pip install --disable-pip-version-check -q -r requirements-dev.txt
  .venv/bin/python -m pip install --disable-pip-version-check -q --no-deps -r requirements-nodeps.txt
  .venv/bin/python -m pip install --disable-pip-version-check -q --no-deps -e .
  touch "$stamp"
fi
