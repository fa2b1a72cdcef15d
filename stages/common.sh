# Shared by the stage scripts: find the installed dcr-mllm and launch it on 1..N processes.
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
  if [[ -x "$repo/.venv/bin/python" ]]; then python="$repo/.venv/bin/python"; else python="$(command -v python3)"; fi
fi
cd "$repo"

# launch NPROC HOSTFILE COMMAND ARGS... : one process, torchrun on one node, or the deepspeed
# launcher across the nodes of a hostfile (NPROC is then processes per node).
launch() {
  local nproc="$1" hostfile="$2"; shift 2
  if [[ -n "$hostfile" ]]; then
    "$(dirname "$python")/deepspeed" --hostfile "$hostfile" --num_gpus "$nproc" --module dcr_mllm.cli "$@"
  elif [[ "$nproc" -gt 1 ]]; then
    "$python" -m torch.distributed.run --standalone --nproc_per_node "$nproc" -m dcr_mllm.cli "$@"
  else
    "$python" -m dcr_mllm.cli "$@"
  fi
}

# parse_stage_args DEFAULT_CONFIG ARGS... : sets config, nproc, hostfile and overrides from
# --config/--nproc/--hostfile (falling back to CONFIG, NPROC, HOSTFILE) and key=value words.
parse_stage_args() {
  config="${CONFIG:-$1}"; shift
  nproc="${NPROC:-1}"
  hostfile="${HOSTFILE:-}"
  overrides=()
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --config) config="$2"; shift 2 ;;
      --nproc) nproc="$2"; shift 2 ;;
      --hostfile) hostfile="$2"; shift 2 ;;
      -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
      *) overrides+=("$1"); shift ;;
    esac
  done
}
