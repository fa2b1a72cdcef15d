#!/usr/bin/env bash
# Stage 3: LLaVA-1.5 instruction tuning (default: the tiny preset).
# `bash stages/3_llava_finetune.sh --help` shows its flags and examples (dcr_mllm.pipeline, step llava-finetune).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
run_step llava-finetune "$@"
