#!/usr/bin/env bash
# Stage 2: LLaVA-1.5 pretraining with a vision tower (default: stage one's tiny tower, tiny Llama).
# `bash stages/2_llava_pretrain.sh --help` shows its flags and examples (dcr_mllm.pipeline, step llava-pretrain).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
run_step llava-pretrain "$@"
