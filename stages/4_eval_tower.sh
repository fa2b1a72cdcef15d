#!/usr/bin/env bash
# Stage 4: measure vision towers -- MMVP-VLM, the classification probes (zero-shot and linear
# probe: D-Ability) and the fine-grained pairs (P-Ability) -- then print a summary table.
#
#   bash stages/4_eval_tower.sh                     # tiny-clip vs stage one's tower, synthetic data
#   bash stages/4_eval_tower.sh --towers "base=/models/clip-l14 dcr=outputs/enhance_clip_l14_224/tower" \
#        --data /data/MMVP_VLM --probe-data /data/imagenet_val_subset
#   bash stages/4_eval_tower.sh --towers "base=world-clip dcr=outputs/enhance_world/tower" --world outputs/world/eval
#
# Flags fall back to the environment: TOWERS (space-separated [NAME=]DIR or preset names), DATA
# (a real MMVP-VLM directory; default: a synthetic one under OUTPUT/data), PROBE_DATA (an image
# folder for the classification probes; default: synthetic), WORLD (a labelled world set: the
# world's metrics instead of the three benchmarks), OUTPUT (default outputs/eval_tower).
# Reports go to OUTPUT/<benchmark>/ with what they were made from (made_from.json: settings, and
# the towers' and data's files); a report made from the same is not scored again.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/common.sh"

towers="${TOWERS:-base=tiny-clip dcr=outputs/enhance_tiny/tower}"
data="${DATA:-}"
probe_data="${PROBE_DATA:-}"
world="${WORLD:-}"
output="${OUTPUT:-outputs/eval_tower}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --towers) towers="$2"; shift 2 ;;
    --data) data="$2"; shift 2 ;;
    --probe-data) probe_data="$2"; shift 2 ;;
    --world) world="$2"; shift 2 ;;
    --output) output="$2"; shift 2 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "error: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

read -r -a specs <<< "$towers"
tower_args=() labels=()
for spec in "${specs[@]}"; do
  name="${spec%%=*}"
  if [[ "$spec" == *=* && -n "$name" && "$name" != */* ]]; then path="${spec#*=}"; else name="$spec" path="$spec"; fi
  if [[ "$path" == */* && ! -d "$path" ]]; then
    echo "error: tower $path does not exist: run stages/1_enhance_tower.sh first (it writes outputs/enhance_tiny/tower), or pass --towers" >&2
    exit 2
  fi
  tower_args+=(--tower "$spec") labels+=("$name")
done

if [[ -n "$world" && ! -f "$world/labels.csv" ]]; then
  echo "error: $world is not a world set (no labels.csv): run dcr-mllm build-world (it writes outputs/world/eval)" >&2
  exit 2
fi
if [[ -z "$data" && -z "$world" ]]; then
  data="$output/data/mmvp_vlm"
  [[ -d "$data" ]] || "$python" -m dcr_mllm.cli make-eval-data mmvp-vlm --output "$data"
fi
if [[ -z "$probe_data" && -z "$world" ]]; then
  probe_data="$output/data/shapes"
  [[ -d "$probe_data" ]] || "$python" -m dcr_mllm.cli make-eval-data classification --output "$probe_data"
fi

# score BENCHMARK ARGS...: write OUTPUT/BENCHMARK/ unless the report there was made from the same
# towers, data and settings (eval-tower --if-changed decides, from the report's made_from.json).
score() {
  mkdir -p "$output"
  "$python" -m dcr_mllm.cli eval-tower "${tower_args[@]}" --benchmark "$1" "${@:2}" --output "$output/$1" --if-changed > "$output/$1.log" \
    || { echo "error: eval-tower $1 failed; see $output/$1.log" >&2; exit 1; }
  grep -m1 "up to date" "$output/$1.log" || echo "$1: $output/$1"
}

if [[ -n "$world" ]]; then
  score world --data "$world" --pairs-per-attribute 30
else
  score mmvp-vlm --data "$data"
  score classification --data "$probe_data"
  score fine-grained
fi
echo
"$python" -c "import sys; from dcr_mllm.evaluation.summary import tower_tables; print(chr(10).join(tower_tables(sys.argv[1])))" "$output"
