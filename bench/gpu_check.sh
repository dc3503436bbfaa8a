#!/usr/bin/env bash
# Every GPU check in one run, on the lent GPU machine as it is (docs/development.md, "The GPU check"):
#   bash bench/gpu_check.sh [--smoke] DIR
# Installs the wheels of wheelhouse/ (made here by `bash bench/gpu_wheels.sh`; nothing comes from the network)
# into a temporary folder on PYTHONPATH, then runs bench/gpu_check.py, which writes DIR/gpu_check.json and
# DIR/gpu_check.log. --smoke runs the same parts on tiny shapes on whatever device there is (what CI runs on the
# CPU, in a simulation of that machine's Python: tests/test_gpu_check.py). BUDGET: seconds for all parts (450).
set -uo pipefail
cd "$(dirname "$0")/.."
smoke=()
if [ "${1:-}" = --smoke ]; then smoke=(--smoke); shift; fi
OUT="${1:?usage: bash bench/gpu_check.sh [--smoke] DIR}"
mkdir -p "$OUT"
PYTHON="${PYTHON:-python3}"
WHEELS="${GPU_WHEELS:-wheelhouse}"
site=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check-site.XXXXXX")
trap 'rm -rf "$site"' EXIT
shopt -s nullglob
wheels=("$WHEELS"/*.whl)
if [ "${#wheels[@]}" -gt 0 ]; then
  if ! "$PYTHON" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile --target "$site" \
      "${wheels[@]}" >"$OUT/install.log" 2>&1; then
    echo "installing the wheels of $WHEELS/ failed ($OUT/install.log):" >&2
    tail -5 "$OUT/install.log" >&2
    exit 3
  fi
  echo "installed ${#wheels[@]} wheels from $WHEELS/"
else
  echo "no wheels in $WHEELS/ (make them with: bash bench/gpu_wheels.sh); the parts that need them will fail" >&2
fi
export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PYTHON" bench/gpu_check.py "$OUT" "${smoke[@]}" --budget "${BUDGET:-450}"
