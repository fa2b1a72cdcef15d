#!/usr/bin/env bash
# The paper's ablation in the tiny world: reconstruction-only, naive and DCR, same budget, several seeds.
# `bash stages/ablation.sh --help` shows its flags and examples (dcr_mllm.pipeline, step ablation).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
run_step ablation "$@"
