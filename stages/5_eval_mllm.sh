#!/usr/bin/env bash
# Stage 5: score LLaVA models on the lmms-eval task suite (eval_tasks/), then compare them.
#
#   bash stages/5_eval_mllm.sh           # stage two's model vs the base-tower model, local synthetic MMVP + POPE
#   bash stages/5_eval_mllm.sh --models "dcr=/ckpt/llava-dcr base=/ckpt/llava-1.5-7b-hf" --tasks dcr_suite --nproc 8
#   bash stages/5_eval_mllm.sh --models "swap=/ckpt/llava-1.5-7b-hf+outputs/enhance_clip_l14_336/tower"
#   bash stages/5_eval_mllm.sh --models "dcr=outputs/llava_world/model base=outputs/llava_world_base/model" --tasks world_local
#
# A model is NAME=DIR (a llava-hf directory, lmms-eval's llava_hf) or NAME=DIR+TOWER (dcr_llava:
# the tower swapped in memory). Flags fall back to MODELS, TASKS (default dcr_suite_local),
# NPROC, OUTPUT (default outputs/eval_mllm) and DCR_EVAL_DATA (local data; default
# outputs/eval_data; the synthetic sets and the world's questions are written when missing). A model whose results are newer than its
# directory is not scored again.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/common.sh"

models="${MODELS:-dcr=outputs/llava_tiny/model base=outputs/llava_tiny_base/model}"
tasks="${TASKS:-dcr_suite_local}"
nproc="${NPROC:-1}"
output="${OUTPUT:-outputs/eval_mllm}"
export DCR_EVAL_DATA="${DCR_EVAL_DATA:-$repo/outputs/eval_data}"
export HF_DATASETS_OFFLINE="${HF_DATASETS_OFFLINE:-1}" HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
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

if [[ "$tasks" == *local* && ! -f "$DCR_EVAL_DATA/pope/random.parquet" ]]; then
  "$python" -m dcr_mllm.cli prepare-eval-data --synthetic --output "$DCR_EVAL_DATA" > /dev/null
fi
if [[ "$tasks" == *world* && ! -f "$DCR_EVAL_DATA/world/test.parquet" ]]; then
  "$python" -m dcr_mllm.cli prepare-eval-data --world 150 --output "$DCR_EVAL_DATA" > /dev/null
fi
device_args="device=cpu,device_map=cpu"
if "$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then device_args="device=cuda"; fi

read -r -a specs <<< "$models"
runs=()
for spec in "${specs[@]}"; do
  name="${spec%%=*}" target="${spec#*=}"
  checkpoint="${target%%+*}"
  if [[ ! -d "$checkpoint" ]]; then
    echo "error: model $checkpoint does not exist: run stages 2-3 first (run_all.sh trains both tiny models), or pass --models" >&2
    exit 2
  fi
  if [[ "$target" == *+* ]]; then
    model=dcr_llava model_args="pretrained=$checkpoint,vision_tower=${target#*+},$device_args"
  else
    model=llava_hf model_args="pretrained=$checkpoint,$device_args"
  fi
  out="$output/$name"
  newest="$(find "$out" -name '*_results.json' -newer "$checkpoint/config.json" 2>/dev/null | head -1 || true)"
  if [[ -n "$newest" && "$(cat "$out/command.txt" 2>/dev/null)" == "$model $model_args $tasks" ]]; then
    echo "$name: up to date in $out"
  else
    rm -rf "$out" && mkdir -p "$output/logs"
    launcher=("$python" -m lmms_eval)
    if [[ "$nproc" -gt 1 ]]; then launcher=("$python" -m accelerate.commands.launch --num_processes "$nproc" -m lmms_eval); fi
    "${launcher[@]}" eval --model "$model" --model_args "$model_args" --tasks "$tasks" --include_path "$repo/eval_tasks" \
      --batch_size 1 --output_path "$out" > "$output/logs/$name.log" 2>&1 || { echo "error: lmms-eval failed for $name; see $output/logs/$name.log" >&2; exit 1; }
    mkdir -p "$out" && printf '%s\n' "$model $model_args $tasks" > "$out/command.txt"
    echo "$name: $out"
  fi
  runs+=("$name=$out")
done

"$python" -m dcr_mllm.cli report "${runs[@]}" --output "$output/report"
