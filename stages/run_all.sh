#!/usr/bin/env bash
# The whole pipeline: enhance a tower (1), train LLaVA with it (2, 3) and, as the baseline, with
# the base tower, score both towers (4) and both LLaVAs (5), then print a summary.
#
#   bash stages/run_all.sh            # the tiny world (default): trained world models, open questions (world_local_open), 2 CPU cores, ~32 min the first time
#   bash stages/run_all.sh --full     # the same with the world LLaVAs' long schedule (llava_full.yaml) on every kind of question (world_local)
#   bash stages/run_all.sh --tiny     # the random tiny preset on synthetic data: every stage in ~4 minutes
#   bash stages/run_all.sh --config-dir stages/configs/paper_clip_l14_224 --nproc 8 [--hostfile hosts.txt]
#
# A config directory holds enhance.yaml (stage 1) and llava.yaml (stages 2-3); the world's are in
# stages/configs/world and its data comes from `dcr-mllm build-world` (step 0). On one CPU process
# the base-tower LLaVA trains alongside stage one and then the DCR-tower LLaVA (one thread each).
# Every stage skips what is already complete, so a rerun resumes where a run stopped, and a
# finished run takes seconds.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/common.sh"

config_dir="$here/configs/world" world=1 llava_name=llava.yaml suffix="" world_task=world_local_open nproc="${NPROC:-1}" hostfile="${HOSTFILE:-}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --config-dir) config_dir="$2" world=0; shift 2 ;;
    --tiny) config_dir="$here/configs/tiny" world=0; shift ;;
    --full) llava_name=llava_full.yaml suffix=_full world_task=world_local; shift ;;
    --nproc) nproc="$2"; shift 2 ;;
    --hostfile) hostfile="$2"; shift 2 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "error: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ "$llava_name" == llava.yaml || "$world" == 1 ]] || { echo "error: --full is the world's long LLaVA schedule; it does not combine with --tiny or --config-dir" >&2; exit 2; }
enhance_config="$config_dir/enhance.yaml" llava_config="$config_dir/$llava_name"
for file in "$enhance_config" "$llava_config"; do
  [[ -f "$file" ]] || { echo "error: $file does not exist; a config directory needs enhance.yaml and llava.yaml" >&2; exit 2; }
done
# read_key FILE KEY: one top-level value of a YAML config
read_key() { "$python" -c "import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))[sys.argv[2]])" "$1" "$2"; }
enhance_out="$(read_key "$enhance_config" output_dir)"
base_tower="$(read_key "$enhance_config" tower)"
llava_out="$(read_key "$llava_config" output_dir)"
launch_args=(--nproc "$nproc"); [[ -n "$hostfile" ]] && launch_args+=(--hostfile "$hostfile")
start=$SECONDS
step() { echo; echo "=== $1 ($((SECONDS - start)) s)"; }
# llava VARIANT TOWER OUT: stages 2 and 3 for one tower
llava() {
  step "2/5 LLaVA pretraining ($1 tower)"
  bash "$here/2_llava_pretrain.sh" --config "$llava_config" "${launch_args[@]}" "tower=$2" "output_dir=$3"
  step "3/5 LLaVA instruction tuning ($1 tower)"
  bash "$here/3_llava_finetune.sh" --config "$llava_config" "${launch_args[@]}" "tower=$2" "output_dir=$3"
}

if [[ "$world" == 1 ]]; then
  step "0/5 build the world (base models cached in ${DCR_MLLM_CACHE:-~/.cache/dcr_mllm}/world; data in outputs/world)"
  "$python" -m dcr_mllm.cli build-world --output outputs/world
fi
side_pid="" one_thread=()
trap '[[ -z "$side_pid" ]] || kill -- "-$side_pid" 2>/dev/null || true' EXIT  # a failed run takes its side job down too
if [[ "$nproc" == 1 && -z "$hostfile" ]] && "$python" -c "import torch, sys; sys.exit(torch.cuda.is_available())"; then
  one_thread=(env OMP_NUM_THREADS=1 MKL_NUM_THREADS=1)  # two one-thread processes share two cores without stalling
  mkdir -p outputs/logs
  echo "(the base-tower LLaVA trains alongside stage one; its log: outputs/logs/llava_base.log)"
  set -m  # its own process group, so that the trap can stop all of it
  (export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1; llava base "$base_tower" "${llava_out}_base") > outputs/logs/llava_base.log 2>&1 &
  side_pid=$!
  set +m
fi
step "1/5 enhance the tower"
"${one_thread[@]}" bash "$here/1_enhance_tower.sh" --config "$enhance_config" "${launch_args[@]}"
if [[ -n "$side_pid" ]]; then
  (export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1; llava dcr "$enhance_out/tower" "$llava_out")  # on the core stage one used
  wait "$side_pid" || { side_pid=""; echo "error: the base-tower LLaVA failed; see outputs/logs/llava_base.log" >&2; exit 1; }
  side_pid=""
else
  llava base "$base_tower" "${llava_out}_base"
  llava dcr "$enhance_out/tower" "$llava_out"
fi

if [[ "$world" == 1 ]]; then
  tower_eval=outputs/eval_tower_world mllm_eval=outputs/eval_mllm_world$suffix
  step "4/5 score the towers (world pairs, per-attribute probes, class)"
  bash "$here/4_eval_tower.sh" --towers "base=$base_tower dcr=$enhance_out/tower" --world outputs/world/eval --output "$tower_eval"
  step "5/5 score the LLaVAs (world questions, lmms-eval)"
  bash "$here/5_eval_mllm.sh" --models "dcr=$llava_out/model base=${llava_out}_base/model" --tasks "$world_task" --nproc "$nproc" --output "$mllm_eval"
else
  tower_eval=outputs/eval_tower mllm_eval=outputs/eval_mllm
  step "4/5 score the towers"
  bash "$here/4_eval_tower.sh" --towers "base=$base_tower dcr=$enhance_out/tower" --output "$tower_eval"
  step "5/5 score the LLaVAs"
  bash "$here/5_eval_mllm.sh" --models "dcr=$llava_out/model base=${llava_out}_base/model" --nproc "$nproc" --output "$mllm_eval"
fi
step "summary"
"$python" -m dcr_mllm.cli summary --run "enhance=$enhance_out" --run "llava=$llava_out" --run "llava_base=${llava_out}_base" \
  --tower-eval "$tower_eval" --mllm-eval "$mllm_eval" --output "outputs/summary$suffix.md"
echo "(summary also in outputs/summary$suffix.md; whole pipeline: $((SECONDS - start)) s)"
