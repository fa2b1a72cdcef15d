#!/usr/bin/env bash
# Stage 2: LLaVA-1.5 pretrain with a vision tower (default: stage one's tiny tower, tiny Llama).
#
#   bash stages/2_llava_pretrain.sh                                  # tiny preset, one CPU process
#   bash stages/2_llava_pretrain.sh --config stages/configs/llava_7b.yaml --nproc 8
#   bash stages/2_llava_pretrain.sh --config C.yaml --nproc 8 --hostfile hosts.txt
#   bash stages/2_llava_pretrain.sh tower=/path/to/tower          # overrides
#
# Flags fall back to the environment: CONFIG, NPROC, HOSTFILE. Reruns resume or do nothing.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/common.sh"
parse_stage_args "$here/configs/llava_tiny.yaml" "$@"
launch "$nproc" "$hostfile" llava-pretrain --config "$config" "${overrides[@]}"
