#!/usr/bin/env bash
# Stage 5: score LLaVA models on the package's lmms-eval tasks, then compare them.
# `bash stages/5_eval_mllm.sh --help` shows its flags and examples (dcr_mllm.pipeline, step eval-mllm).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
run_step eval-mllm "$@"
