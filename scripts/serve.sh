#!/usr/bin/env bash
# Set up .venv and run Cog's real HTTP server (coglet) with predict.py on 127.0.0.1:${PORT:-5000}.
# Extra arguments go to the server, e.g. --upload-url http://127.0.0.1:9000/uploads/
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m musicgen_dev.cog_schema --check || {
  echo "regenerating .cog/openapi_schema.json from predict.py" >&2
  .venv/bin/python -m musicgen_dev.cog_schema
}
# coglet starts its worker with the first `python` on PATH: it must be the venv's.
export PATH="$PWD/.venv/bin:$PATH"
export COG_PREDICT_TYPE_STUB="predict.py:Predictor"
export PORT="${PORT:-5000}"
# Cog's slots follow the model's (MUSICGEN_CONCURRENCY) unless COG_MAX_CONCURRENCY is set
export COG_MAX_CONCURRENCY="${COG_MAX_CONCURRENCY:-${MUSICGEN_CONCURRENCY:-1}}"
exec python -m cog.server.http --host "${HOST:-127.0.0.1}" "$@"
