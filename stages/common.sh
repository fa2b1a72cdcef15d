# Shared by the stage scripts: find the installed dcr-mllm, then run one pipeline step in Python
# (dcr_mllm.pipeline: arguments, launching, freshness); `bash stages/SCRIPT --help` shows the step's flags.
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
  if [[ -x "$repo/.venv/bin/python" ]]; then python="$repo/.venv/bin/python"; else python="$(command -v python3)"; fi
fi
cd "$repo"

# run_step STEP ARGS...: python -m dcr_mllm.pipeline STEP ARGS...
run_step() { exec "$python" -m dcr_mllm.pipeline "$@"; }
