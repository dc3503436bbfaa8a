#!/usr/bin/env bash
# Set up .venv and generate music: scripts/predict.sh "a prompt" [more musicgen flags]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
prompt="${1:-lofi hip hop beat with mellow piano and soft drums}"
shift || true
exec .venv/bin/musicgen --prompt "$prompt" -o outputs "$@"
