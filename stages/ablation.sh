#!/usr/bin/env bash
# The paper's ablation in the tiny world: reconstruction-only, naive and DCR trained from the same
# base tower and denoiser with the same budget, over several seeds, then every tower metric as
# mean +- std (OUT/results.json, OUT/report.md, OUT/chart.png), and each objective's validation
# curve over the LoRA steps (OUT/curves.png, the report's curve tables). Builds the world models on first use.
#
#   bash stages/ablation.sh                          # outputs/ablation, 3 seeds
#   bash stages/ablation.sh --output OUT --seeds N [--jobs J] [--config C.yaml] [key=value ...]
#
# Prints OUT as its last line. Finished runs are skipped, so a rerun takes seconds.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/common.sh"
case "${1:-}" in -h|--help) sed -n '2,10p' "$0"; exit 0 ;; esac
HF_HUB_OFFLINE=1 "$python" -m dcr_mllm.enhance.ablation "$@"
