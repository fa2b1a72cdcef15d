#!/usr/bin/env bash
# Stage 1: enhance a vision tower with DCR (projector stage, then LoRA stage), then export it.
#
#   bash stages/1_enhance_tower.sh                       # tiny preset, one CPU process
#   bash stages/1_enhance_tower.sh --config stages/configs/enhance_clip_l14_224.yaml --nproc 8
#   bash stages/1_enhance_tower.sh --config C.yaml --nproc 8 --hostfile hosts.txt   # multi-node
#   bash stages/1_enhance_tower.sh seed=1 lora_stage.max_steps=50                     # overrides
#
# Flags fall back to the environment: CONFIG, NPROC, HOSTFILE. Rerunning a finished run does
# nothing; rerunning an interrupted one resumes from its last checkpoint.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/common.sh"

parse_stage_args "$here/configs/enhance_tiny.yaml" "$@"
launch "$nproc" "$hostfile" enhance --config "$config" "${overrides[@]}"
