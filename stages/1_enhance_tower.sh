#!/usr/bin/env bash
# Stage 1: enhance a vision tower with DCR (projector stage, then LoRA stage), then export it.
# `bash stages/1_enhance_tower.sh --help` shows its flags and examples (dcr_mllm.pipeline, step enhance).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
run_step enhance "$@"
