#!/usr/bin/env bash
# Calibrate the world's stage two: a positive and a negative control tower through the same LLaVA pipeline.
# `bash stages/calibrate.sh --help` shows its flags and examples (dcr_mllm.pipeline, step calibrate).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
run_step calibrate "$@"
