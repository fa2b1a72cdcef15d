"""An export's record of the trained weights it was made from, so that a stage re-exports only when
they changed (``export_is_current``)."""

from __future__ import annotations

import json
from pathlib import Path

from dcr_mllm.io import write_atomic
from dcr_mllm.training.checkpoints import is_finished, plain

#: written into an export by ``write_export_marker``: the weights it was made from
EXPORT_MARKER = "trained_from.json"


def training_digests(stage_dirs: list[Path]) -> dict[str, str]:
    """{stage folder name: sha256 of its trained weights} from each finished stage's train_state.json."""
    return {Path(d).name: json.loads((Path(d) / "train_state.json").read_text())["weights_sha256"] for d in stage_dirs}


def export_is_current(out_dir: Path, stage_dirs: list[Path], choice: dict | None = None) -> bool:
    """True when ``out_dir`` was exported from the weights the stages hold now (its marker says so)
    and, given ``choice`` (which of them was exported, e.g. a selected step), with that choice."""
    marker = Path(out_dir) / EXPORT_MARKER
    if not marker.is_file() or not all(is_finished(d) for d in stage_dirs):
        return False
    return json.loads(marker.read_text()) == _marker(stage_dirs, choice)


def write_export_marker(out_dir: Path, stage_dirs: list[Path], choice: dict | None = None) -> None:
    write_atomic(Path(out_dir) / EXPORT_MARKER, json.dumps(_marker(stage_dirs, choice), indent=1))


def _marker(stage_dirs: list[Path], choice: dict | None) -> dict:
    return {**training_digests(stage_dirs), **({"choice": plain(choice)} if choice else {})}
