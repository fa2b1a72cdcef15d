#!/usr/bin/env bash
# Stage 5: score LLaVA models on the lmms-eval task suite (the package's tasks), then compare them.
#
#   bash stages/5_eval_mllm.sh           # stage two's model vs the base-tower model, local synthetic MMVP + POPE
#   bash stages/5_eval_mllm.sh --models "dcr=/ckpt/llava-dcr base=/ckpt/llava-1.5-7b-hf" --tasks dcr_suite --nproc 8
#   bash stages/5_eval_mllm.sh --models "swap=/ckpt/llava-1.5-7b-hf+outputs/enhance_clip_l14_336/tower"
#   bash stages/5_eval_mllm.sh --models "dcr=outputs/llava_world/model base=outputs/llava_world_base/model" --tasks world_local_open
#
# A model is NAME=DIR (a llava-hf directory, lmms-eval's llava_hf) or NAME=DIR+TOWER (dcr_llava:
# the tower swapped in memory). Flags fall back to MODELS, TASKS (default dcr_suite_local),
# NPROC, OUTPUT (default outputs/eval_mllm) and DCR_EVAL_DATA (local data; default
# outputs/eval_data). `dcr-mllm eval-mllm` does the work: it writes the local tasks' data where
# it is missing or stale, and scores a model again only when its model, tower, tasks or data changed.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/common.sh"

models="${MODELS:-dcr=outputs/llava_tiny/model base=outputs/llava_tiny_base/model}"
tasks="${TASKS:-dcr_suite_local}"
nproc="${NPROC:-1}"
output="${OUTPUT:-outputs/eval_mllm}"
export DCR_EVAL_DATA="${DCR_EVAL_DATA:-$repo/outputs/eval_data}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --models) models="$2"; shift 2 ;;
    --tasks) tasks="$2"; shift 2 ;;
    --nproc) nproc="$2"; shift 2 ;;
    --output) output="$2"; shift 2 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "error: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

read -r -a specs <<< "$models"
model_args=()
for spec in "${specs[@]}"; do model_args+=(--model "$spec"); done
"$python" -m dcr_mllm.cli eval-mllm "${model_args[@]}" --tasks "$tasks" --nproc "$nproc" --output "$output"
