#!/usr/bin/env bash
# The whole pipeline: enhance a tower (1), train LLaVA with it and with the base tower (2, 3), score both (4, 5), summary.
# `bash stages/run_all.sh --help` shows its flags and examples (dcr_mllm.pipeline, step run-all).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
run_step run-all "$@"
