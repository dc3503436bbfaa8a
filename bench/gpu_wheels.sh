#!/usr/bin/env bash
# Download, here, the wheels bench/gpu_check.sh installs on a GPU machine that has its own torch and
# transformers but no network (Python 3.12, manylinux x86_64) into ./wheelhouse (ignored by git).
#   bash bench/gpu_wheels.sh [PYTHON_VERSION]
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION="${1:-3.12}"
mkdir -p wheelhouse
grep -E '^(soundfile|av|julius|pyloudnorm|scipy|safetensors|cog|fsspec|prometheus-client|sentencepiece|tqdm|PyYAML|einops)==' \
  requirements.txt > wheelhouse/requirements.txt
grep -E '^pytest==' requirements-dev.txt >> wheelhouse/requirements.txt
python3 -m pip download --disable-pip-version-check -q --only-binary=:all: --no-deps --python-version "$VERSION" \
  --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform any -d wheelhouse -r wheelhouse/requirements.txt
du -sh wheelhouse
