"""Whether the evaluations a summary reads still describe the towers and LLaVAs they name: each
report's ``made_from.json`` (``evaluation.freshness``) against those models' files now. The
evaluations rescore themselves when called again; the summary only refuses a stale table."""

from __future__ import annotations

import json
from pathlib import Path

from dcr_mllm.errors import DcrError
from dcr_mllm.evaluation.freshness import RECORD, fingerprint


def _records(folder: Path) -> list[tuple[Path, dict]]:
    """(report folder, its record) for every report directly under ``folder``."""
    found = []
    for file in sorted(folder.glob(f"*/{RECORD}")) if folder.is_dir() else []:
        try:
            found.append((file.parent, json.loads(file.read_text(encoding="utf-8"))))
        except (OSError, ValueError):
            continue  # unreadable: the evaluation scores it again when called
    return found


def _changed(recorded: object, path: str) -> bool:
    """Whether a model still there (a path from another working directory, or gone, cannot tell) differs."""
    return recorded is not None and Path(path).exists() and recorded != fingerprint(path)


def check_current(tower_eval: Path, mllm_eval: Path) -> None:
    """Refuse, in one line, a tower or LLaVA table scored on a model whose files changed since.

    Args:
        tower_eval: the tower evaluation's output (one report per benchmark, ``eval-tower``).
        mllm_eval: the MLLM evaluation's output (one folder per model, ``eval-mllm``).
    """
    for report, record in _records(tower_eval):
        for label, path in record.get("settings", {}).get("towers", {}).items():
            if _changed(record.get("inputs", {}).get(f"tower/{label}"), path):
                raise DcrError(
                    f"the tower table {report} was scored before tower {label} ({path}) changed; score it again: "
                    f"dcr-mllm eval-tower ... --output {report} --if-changed (or bash stages/4_eval_tower.sh)"
                )
    for report, record in _records(mllm_eval):
        args = dict(
            word.split("=", 1) for word in record.get("settings", {}).get("model_args", "").split(",") if "=" in word
        )
        for key, arg in (("model", "pretrained"), ("tower", "vision_tower")):
            path = args.get(arg)
            if path and _changed(record.get("inputs", {}).get(key), path):
                raise DcrError(
                    f"the LLaVA table {report} was scored before its {key} ({path}) changed; score it again: "
                    f"dcr-mllm eval-mllm --models {report.name}=... --output {report.parent} (or bash stages/5_eval_mllm.sh)"
                )
