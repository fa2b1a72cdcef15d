"""Which evaluation outputs were computed on generated data, read from what the evaluations
recorded (``eval-tower``'s ``made_from.json``, ``eval-mllm``'s ``report/data_sources.json``), so
that every table made from stand-ins says so."""

from __future__ import annotations

from pathlib import Path

from dcr_mllm.evaluation.freshness import RECORD, synthetic_note
from dcr_mllm.strict import read_json

#: the heading suffix of a table computed on generated data (its note line says which)
SYNTHETIC_HEADING = " — synthetic data"


def tower_synthetic(tower_eval: Path, benchmark: str) -> str | None:
    """The generator of a tower report's data, as its ``made_from.json`` records it (None: real data)."""
    record = tower_eval / benchmark / RECORD
    data = read_json(record) if record.is_file() else None
    settings = data.get("settings") if isinstance(data, dict) else None
    made = settings.get("synthetic_data") if isinstance(settings, dict) else None
    return made if isinstance(made, str) else None


def mllm_synthetic(mllm_eval: Path) -> dict[str, str]:
    """``{data folder: generator}`` of the MLLM report's generated data (empty: real or hub data)."""
    record = mllm_eval / "report" / "data_sources.json"
    data = read_json(record) if record.is_file() else None
    made = data.get("synthetic") if isinstance(data, dict) else None
    return {str(k): str(v) for k, v in made.items()} if isinstance(made, dict) else {}


def mark_synthetic(lines: list[str], made_up: dict[str, str]) -> list[str]:
    """A table (heading, blank line, body) with the heading marked and the note under it, where
    ``made_up`` names generated data; as it was otherwise."""
    if not made_up:
        return lines
    return [lines[0] + SYNTHETIC_HEADING, "", synthetic_note(made_up), "", *lines[2:]]
