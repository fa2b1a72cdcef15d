#!/usr/bin/env bash
# Stage 4: score vision towers (MMVP-VLM, classification probes, fine-grained pairs; or the world's metrics).
# `bash stages/4_eval_tower.sh --help` shows its flags and examples (dcr_mllm.pipeline, step eval-tower).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
run_step eval-tower "$@"
