"""What an export records of the trained weights it was made from (its ``build_once``
fingerprint), so that a stage re-exports only when they, or the choice among them, changed."""

from __future__ import annotations

import json
from pathlib import Path

from dcr_mllm.components.build_once import is_built
from dcr_mllm.training.checkpoints import is_finished, plain


def training_digests(stage_dirs: list[Path]) -> dict[str, str]:
    """{stage folder name: sha256 of its trained weights} from each finished stage's train_state.json."""
    return {Path(d).name: json.loads((Path(d) / "train_state.json").read_text())["weights_sha256"] for d in stage_dirs}


def export_fingerprint(stage_dirs: list[Path], choice: dict | None = None) -> str:
    """The finished stages' weight digests and, given ``choice`` (which of them is exported, e.g. a
    selected step), that choice, as the text an export's build marker holds."""
    return json.dumps(
        {**training_digests(stage_dirs), **({"choice": plain(choice)} if choice else {})}, indent=1, sort_keys=True
    )


def export_is_current(out_dir: Path, stage_dirs: list[Path], choice: dict | None = None) -> bool:
    """True when ``out_dir`` is a complete export of the weights the stages hold now, with ``choice``.

    Args:
        out_dir: the export's directory.
        stage_dirs: the stage folders whose trained weights it is made from.
        choice: which of their weights is exported (e.g. a selected step); None: the final ones.
    """
    return all(is_finished(d) for d in stage_dirs) and is_built(out_dir, export_fingerprint(stage_dirs, choice))
