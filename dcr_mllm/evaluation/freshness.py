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
import shutil
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


def data_fingerprint(paths: str | Path | list[str | Path]) -> object:
    """A data set's fingerprint (shards, an image folder, a conversation file) from each file's path,
    size and modification time, never its bytes: a training set of many GB is only listed."""
    paths = [paths] if isinstance(paths, str | Path) else paths
    files = []  # (name relative to the path given, file): the same data moved elsewhere is the same data
    for path in map(Path, paths):
        if path.is_dir():
            files += [(p.relative_to(path), p) for p in sorted(path.rglob("*")) if p.is_file() and p.name[0] != "."]
        else:
            files.append((path.name, path))
    listing, total = hashlib.sha256(), 0
    for name, file in files:
        stat = file.stat() if file.is_file() else None
        total += stat.st_size if stat else 0
        listing.update(f"{name}\t{stat.st_size if stat else '-'}\t{stat.st_mtime_ns if stat else '-'}\n".encode())
    return {"files": len(files), "bytes": total, "listing_sha256": listing.hexdigest()}


def _summary(value: object) -> str:
    """A fingerprint in a few characters: a name as itself, a tree of file digests as its own digest."""
    if value is None or isinstance(value, str):
        return str(value) if value is not None else "none"
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:12]


def stage_started(stage_dir: str | Path) -> bool:
    """Whether a training stage's folder holds training output (a checkpoint or a finished run)."""
    stage_dir = Path(stage_dir)
    return (stage_dir / "train_state.json").is_file() or (stage_dir / "checkpoints").is_dir()


def check_stage(stage_dir: str | Path, record: dict, finished: bool, overwrite: str = "pass --overwrite") -> None:
    """Refuse, in one line, a training stage's output made from other inputs than ``record``'s (or,
    once ``finished``, with other settings; an unfinished stage's settings are the resume check's).
    A started stage without a record predates it: its inputs are unknown, so it is refused too.

    Args:
        stage_dir: the stage's folder; one with no training output passes.
        record: what it would be made from now (``made_from``).
        finished: whether the stage finished (then it would be reused as it is).
        overwrite: how to train it again, in the refusal (the stage's command with ``--overwrite``).
    """
    from dcr_mllm.errors import DcrError
    from dcr_mllm.training.checkpoints import config_changes

    if not stage_started(stage_dir):
        return
    fix = f"use a new output_dir, or {overwrite} to train it again"
    try:
        old = json.loads((Path(stage_dir) / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise DcrError(f"{stage_dir} was made from unrecorded inputs (it has no {RECORD}); {fix}") from None
    changed = [
        f"{name}: {_summary(old['inputs'].get(name))} -> {_summary(record['inputs'].get(name))}"
        for name in dict.fromkeys([*old["inputs"], *record["inputs"]])
        if old["inputs"].get(name) != record["inputs"].get(name)
    ]
    if changed:
        names = [item.split(":")[0] for item in changed]
        what = f"another {names[0]}" if len(names) == 1 else "other inputs"
        raise DcrError(f"{stage_dir} was made from {what} ({'; '.join(changed)}); {fix}")
    settings = config_changes(old["settings"], record["settings"]) if finished else []
    if settings:
        listed = ", ".join(f"{key}: {before!r} -> {after!r}" for key, before, after in settings)
        raise DcrError(f"{stage_dir} was made with other settings ({listed}); {fix}")


def remove_stage(path: Path) -> None:
    """Remove a stage's output for ``--overwrite``; only the link when it is one (shared with another run)."""
    if path.is_symlink():
        path.unlink()
    else:
        shutil.rmtree(path, ignore_errors=True)
