#!/usr/bin/env bash
# The budget curve in the tiny world: naive and DCR (global and tokens) at 1x, 4x and 16x the LoRA steps, rate and
# step chosen on validation, several seeds. `bash stages/budget.sh --help` shows its flags (dcr_mllm.enhance.budget).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
run_step budget "$@"
