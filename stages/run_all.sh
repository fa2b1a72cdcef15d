#!/usr/bin/env bash
# The whole pipeline: enhance a tower (1), train LLaVA with it (2, 3) and, as the baseline, with
# the base tower, score both towers (4) and both LLaVAs (5), then print a summary.
#
#   bash stages/run_all.sh                          # tiny embedded default, 2 CPU cores, ~10 minutes
#   bash stages/run_all.sh --config-dir stages/configs/paper_clip_l14_224 --nproc 8 [--hostfile hosts.txt]
#
# A config directory holds enhance.yaml (stage 1) and llava.yaml (stages 2-3). Every stage skips
# what is already complete, so a rerun resumes where a run stopped, and a finished run takes seconds.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/common.sh"

config_dir="" nproc="${NPROC:-1}" hostfile="${HOSTFILE:-}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --config-dir) config_dir="$2"; shift 2 ;;
    --nproc) nproc="$2"; shift 2 ;;
    --hostfile) hostfile="$2"; shift 2 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "error: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
enhance_config="${config_dir:+$config_dir/enhance.yaml}"; enhance_config="${enhance_config:-$here/configs/enhance_tiny.yaml}"
llava_config="${config_dir:+$config_dir/llava.yaml}"; llava_config="${llava_config:-$here/configs/llava_tiny.yaml}"
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
step "1/5 enhance the tower"
bash "$here/1_enhance_tower.sh" --config "$enhance_config" "${launch_args[@]}"
for variant in dcr base; do
  tower="$enhance_out/tower" out="$llava_out"
  [[ "$variant" == base ]] && tower="$base_tower" out="${llava_out}_base"
  step "2/5 LLaVA pretraining ($variant tower)"
  bash "$here/2_llava_pretrain.sh" --config "$llava_config" "${launch_args[@]}" "tower=$tower" "output_dir=$out"
  step "3/5 LLaVA instruction tuning ($variant tower)"
  bash "$here/3_llava_finetune.sh" --config "$llava_config" "${launch_args[@]}" "tower=$tower" "output_dir=$out"
done
step "4/5 score the towers"
bash "$here/4_eval_tower.sh" --towers "base=$base_tower dcr=$enhance_out/tower"
step "5/5 score the LLaVAs"
bash "$here/5_eval_mllm.sh" --models "dcr=$llava_out/model base=${llava_out}_base/model" --nproc "$nproc"
step "summary"
"$python" -m dcr_mllm.cli summary --run "enhance=$enhance_out" --run "llava=$llava_out" --run "llava_base=${llava_out}_base" \
  --output outputs/summary.md
echo "(summary also in outputs/summary.md; whole pipeline: $((SECONDS - start)) s)"
