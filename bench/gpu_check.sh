#!/usr/bin/env bash
# The GPU check, prepared for the day a GPU is lent: real-size stage-one DCR steps (SD 2.1-base,
# CLIP L/14 @224/@336, bf16 through DeepSpeed, B = 8 and 16, unchunked and chunked) and one
# LLaVA-7B-shaped LoRA finetune step under ZeRO-3. Writes bench/results/gpu_check.json; about
# 5 minutes on one H200 (budget: 8).
#
#   bash bench/gpu_check.sh                 # on a CUDA machine
#   bash bench/gpu_check.sh --smoke         # the same code on tiny configs on CPU (the tests run this)
#   bash bench/gpu_check.sh --output F.json --steps 5
#
# PYTHON picks the interpreter (default: the repo's .venv, else python3 — on a lent GPU machine,
# its image's python3 with this repo on PYTHONPATH).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
  if [[ -x "$repo/.venv/bin/python" ]]; then python="$repo/.venv/bin/python"; else python="$(command -v python3)"; fi
fi
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [[ " $* " == *" --smoke "* ]]; then export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"; fi
exec "$python" "$repo/bench/gpu_check.py" "$@"
