#!/usr/bin/env bash
# Stage 3: LLaVA-1.5 finetune with a vision tower (default: stage one's tiny tower, tiny Llama).
#
#   bash stages/3_llava_finetune.sh                                  # tiny preset, one CPU process
#   bash stages/3_llava_finetune.sh --config stages/configs/llava_7b.yaml --nproc 8
#   bash stages/3_llava_finetune.sh --config C.yaml --nproc 8 --hostfile hosts.txt
#   bash stages/3_llava_finetune.sh tower=/path/to/tower          # overrides
#
# Flags fall back to the environment: CONFIG, NPROC, HOSTFILE. Reruns resume or do nothing.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/common.sh"
parse_stage_args "$here/configs/llava_tiny.yaml" "$@"
launch "$nproc" "$hostfile" llava-finetune --config "$config" "${overrides[@]}"
