#!/usr/bin/env bash
# Every GPU check in one run on a bare GPU machine (its own torch and transformers; nothing from the network):
#   bash bench/gpu_check.sh DIR
# writes DIR/gpu_check.json and one log per part (bench/gpu_check.py says what each part is). Packages the
# machine lacks are installed from ./wheelhouse (made beforehand by `bash bench/gpu_wheels.sh`, carried along).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:?usage: bash bench/gpu_check.sh DIR}"
mkdir -p "$OUT"
PYTHON="${PYTHON:-python3}"
missing=()
for spec in soundfile:soundfile av:av julius:julius pyloudnorm:pyloudnorm scipy:scipy safetensors:safetensors \
            cog:cog fsspec:fsspec prometheus_client:prometheus-client pytest:pytest sentencepiece:sentencepiece \
            tqdm:tqdm yaml:PyYAML einops:einops; do
  "$PYTHON" -c "import ${spec%%:*}" 2>/dev/null || missing+=("${spec##*:}")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing from wheelhouse/: ${missing[*]}" | tee "$OUT/install.log"
  "$PYTHON" -m pip install --no-index --find-links wheelhouse --no-deps "${missing[@]}" >>"$OUT/install.log" 2>&1 \
    || echo "some packages could not be installed (see install.log); the parts that need them will fail" | tee -a "$OUT/install.log"
fi
# compile off unless asked: the figures are for CUDA graphs of the eager kernels (bench/decode.py --compile
# measures the compiled form and its compile time separately)
MUSICGEN_COMPILE="${MUSICGEN_COMPILE:-0}" exec "$PYTHON" bench/gpu_check.py "$OUT" --budget "${BUDGET:-450}"
