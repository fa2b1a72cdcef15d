"""A stage folder's files, read without DeepSpeed: whether a run finished, whether a checkpoint is
whole, which settings changed since it was made, the metrics log to resume, the trained weights."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from dcr_mllm.errors import DcrError
from dcr_mllm.io import write_atomic
from dcr_mllm.training.safe_state import check_safetensors
from dcr_mllm.training.zero import gathered, writes_here

TRAINABLE = "trainable.safetensors"
MANIFEST = "manifest.json"


def is_finished(stage_dir: str | Path, max_steps: int | None = None) -> bool:
    """True once a stage's run completed (its train_state.json says so) and, given ``max_steps``,
    reached it: a finished run whose ``max_steps`` was raised has more to do."""
    state = Path(stage_dir) / "train_state.json"
    if not state.is_file():
        return False
    summary = json.loads(state.read_text())
    return summary.get("finished", False) and (max_steps is None or summary["step"] >= max_steps)


def checkpoint_problem(folder: Path, world_size: int) -> str | None:
    """What makes a checkpoint folder unusable (a file missing, truncated or with a broken
    safetensors header), or None. Checked before DeepSpeed reads it, whose error would be a
    traceback; every file the manifest lists must be there at its size, and whole."""
    manifest_file = folder / MANIFEST
    if manifest_file.is_file():
        try:
            sizes = json.loads(manifest_file.read_text())["files"]
        except (json.JSONDecodeError, KeyError):
            return f"{MANIFEST} unreadable"
    else:  # written before manifests: check what is there
        sizes = {p.name: None for p in folder.iterdir() if p.is_file()}
        sizes.update({f"rank{r}_state.safetensors": None for r in range(world_size)})
    for name, size in sizes.items():
        path = folder / name
        if not path.is_file():
            return f"{name} missing"
        if size is not None and path.stat().st_size != size:
            return f"{name} truncated" if path.stat().st_size < size else f"{name} has the wrong size"
        problem = check_safetensors(path)
        if problem:
            return f"{name} {problem}"
    return None


def config_changes(old: dict, new: dict) -> list[tuple[str, object, object]]:
    """(key, checkpoint value, new value) for each setting that differs. ``max_steps`` may grow
    while the schedule does not depend on it (constant, warm-up in steps)."""
    old_flat, new_flat = _flatten(old), _flatten(new)
    changes = []
    for key in dict.fromkeys([*old_flat, *new_flat]):
        before, after = old_flat.get(key), new_flat.get(key)
        if before == after:
            continue
        if key == "max_steps" and before is not None and after is not None and after > before:
            horizon_free = new_flat.get("scheduler") == "constant" and (
                new_flat.get("warmup_steps") or not new_flat.get("warmup_ratio")
            )
            if horizon_free:
                continue
        changes.append((key, before, after))
    return changes


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def plain(value):
    """JSON's view of ``value`` (tuples become lists), so stored and new settings compare equal."""
    return json.loads(json.dumps(value))


def truncate_jsonl(path: Path, step: int) -> None:
    """Drop the lines a killed run logged after the checkpoint being resumed (they are logged
    again), and a line the kill cut short."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    kept = [line for line in lines if line.endswith("\n") and json.loads(line)["step"] <= step]
    if len(kept) != len(lines):
        write_atomic(path, "".join(kept))


def load_trainable_state(module: nn.Module, path: str | Path, prefix: str = "") -> list[str]:
    """Load ``trainable.safetensors`` entries starting with ``prefix`` into ``module`` (partitioned
    ZeRO-3 parameters too: every rank must call it then)."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise DcrError(f"{path} does not exist; run the stage that writes it first")
    state = {k[len(prefix) :]: v for k, v in load_file(path).items() if k.startswith(prefix)}
    if not state:
        raise DcrError(f"{path} holds no parameters under '{prefix}'; it was written by another stage")
    unexpected = []
    own = dict(module.named_parameters())
    for key, value in state.items():
        if key not in own:
            unexpected.append(key)
            continue
        with gathered([own[key]]), torch.no_grad():  # ZeRO-3: rank 0 writes, then it is partitioned again
            if writes_here([own[key]]):
                own[key].copy_(value.to(own[key].dtype))
    if unexpected:
        raise DcrError(
            f"{path} has parameters this model lacks ({', '.join(unexpected[:3])}...); it belongs to another model"
        )
    return list(state)
