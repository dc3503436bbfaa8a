#!/usr/bin/env bash
# Set up .venv and run Cog's real HTTP server (coglet) with predict.py on 127.0.0.1:${PORT:-5000}, as the image
# runs it: up to cog.yaml's concurrency.max predictions at once (COG_MAX_CONCURRENCY), readable log lines
# (LOG_FORMAT=json for Cog's JSON lines). musicgen_dev/serve.py says what each setting does.
# Extra arguments go to the server, e.g. --upload-url http://127.0.0.1:9000/uploads/
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m musicgen_dev.cog_schema --check || {
  echo "regenerating .cog/openapi_schema.json from predict.py" >&2
  .venv/bin/python -m musicgen_dev.cog_schema
}
exec .venv/bin/python -m musicgen_dev.serve "$@"
