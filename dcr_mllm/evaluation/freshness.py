"""When an evaluation's output is up to date: its record of what it was made from equals what it
would be made from now. One rule for every evaluation stage (``eval-tower --if-changed``, stage 4;
``eval-mllm``, stage 5), in place of comparing file times in shell.

What an output is made from: the command's settings, and for every input path a fingerprint of
its files (a small file's sha256; a large one's size and modification time, since hashing a
14 GB checkpoint would cost more than many evaluations). A preset or hub name counts as itself.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from dcr_mllm.io import generated_from, write_atomic

RECORD = "made_from.json"
HASHED_BELOW = 64 << 20  # bytes; larger files count by size and modification time


def fingerprint(path: str | Path) -> object:
    """A JSON value that changes when ``path`` (a file, a directory, or a name that is no path) does."""
    path = Path(path)
    if not path.exists():
        return str(path)
    files = (
        [path]
        if path.is_file()
        else sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".") and p.suffix != ".pyc")
    )
    return {str(p.relative_to(path)) if p != path else p.name: _file_fingerprint(p) for p in files}


def _file_fingerprint(path: Path) -> str:
    stat = path.stat()
    if stat.st_size >= HASHED_BELOW:
        return f"size {stat.st_size}, mtime_ns {stat.st_mtime_ns}"
    return hashlib.sha256(path.read_bytes()).hexdigest()


def made_from(settings: dict, inputs: dict[str, str | Path | None]) -> dict:
    """The record of one evaluation: its settings and each named input's fingerprint."""
    return json.loads(
        json.dumps({"settings": settings, "inputs": {name: fingerprint(p) for name, p in inputs.items() if p}})
    )


def generator(data: str | Path | None) -> str | None:
    """The generator a data folder records in its ``generated.json`` (``dcr_mllm.io.generated_dir``,
    ``prepare-eval-data``): set for data the project made up, absent for data read from a real source."""
    record = generated_from(data) if data else None
    name = record.get("generator") if isinstance(record, dict) else None
    return name if isinstance(name, str) else None


def synthetic_note(generators: dict[str, str]) -> str:
    """The line every table computed on generated data carries (``{what: generator}``); empty when none was."""
    if not generators:
        return ""
    made = ", ".join(f"{what}: {name}" for what, name in generators.items())
    return f"data: synthetic stand-ins ({made}), not the published benchmarks"


def is_current(output: str | Path, record: dict) -> bool:
    file = Path(output) / RECORD
    try:
        return json.loads(file.read_text(encoding="utf-8")) == record
    except (OSError, ValueError):
        return False


def mark_current(output: str | Path, record: dict) -> None:
    """Written last, once the output is complete: an interrupted evaluation is never taken as current."""
    write_atomic(Path(output) / RECORD, json.dumps(record, indent=1, sort_keys=True))
