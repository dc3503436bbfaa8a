#!/usr/bin/env bash
# The wheels bench/gpu_check.sh installs on the lent GPU machine, which has its own Python 3.12, torch and
# transformers but no network: only what the check imports and the machine's image lacks (bench/gpu_wheels.txt),
# for manylinux x86_64, into one git-ignored folder that travels with the tree (the device tool's `carry`).
#   bash bench/gpu_wheels.sh [--python 3.12] [DIR]     (DIR: wheelhouse)
# Refuses a result over 8 MiB (what travels with the tree is capped at 64 MiB in all).
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=3.12
if [ "${1:-}" = --python ]; then VERSION="${2:?--python needs a version, e.g. 3.12}"; shift 2; fi
DIR="${1:-wheelhouse}"
mkdir -p "$DIR"
rm -f "$DIR"/*.whl  # two versions of one package would stop the install there
python3 -m pip download --disable-pip-version-check -q --only-binary=:all: --no-deps --python-version "$VERSION" \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform any -d "$DIR" -r bench/gpu_wheels.txt
kib=$(du -sk "$DIR" | cut -f1)
echo "$DIR: $(ls "$DIR"/*.whl | wc -l) wheels, $((kib / 1024)) MiB ($kib KiB)"
if [ "$kib" -gt 8192 ]; then
  echo "$DIR holds more than 8 MiB: bring only what the check imports and the image lacks" >&2
  exit 1
fi
