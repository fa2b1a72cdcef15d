"""A stage folder's files, without DeepSpeed: whether a run finished, whether a checkpoint is whole,
publishing and pruning checkpoints, the newest intact one to resume from, which settings changed
since it was made, the metrics log to resume, the trained weights."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from torch import nn

from dcr_mllm.errors import DcrError
from dcr_mllm.io import write_atomic
from dcr_mllm.training.config import TrainConfig
from dcr_mllm.training.log import logger
from dcr_mllm.training.safe_state import check_safetensors, load_tree
from dcr_mllm.training.zero import gathered, writes_here

TRAINABLE = "trainable.safetensors"
MANIFEST = "manifest.json"
#: the TrainConfig fields that change what training computes (the rest: logging, saving, workers)
TRAINING_KEYS = (
    "max_steps",
    "micro_batch_size",
    "grad_accum",
    "lr",
    "group_lrs",
    "weight_decay",
    "betas",
    "adam_eps",
    "scheduler",
    "warmup_steps",
    "warmup_ratio",
    "grad_clip",
    "zero_stage",
    "precision",
)


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


def publish_checkpoint(checkpoint_dir: Path, tag: str) -> None:
    """Rank 0, once every rank has written its part of ``tag.partial``: write its manifest (every
    file and its size), rename it to ``tag`` and point ``latest`` at it."""
    partial = checkpoint_dir / f"{tag}.partial"
    for script in (
        "zero_to_fp32.py",
        "zero_to_torch.py",
    ):  # DeepSpeed's pickle-based converters; ours need none
        (checkpoint_dir / script).unlink(missing_ok=True)
    files = sorted(p for p in partial.iterdir() if p.is_file())
    manifest = {"files": {p.name: p.stat().st_size for p in files}}
    write_atomic(partial / MANIFEST, json.dumps(manifest, indent=1))
    final = checkpoint_dir / tag
    if final.exists():
        shutil.rmtree(final)
    os.replace(partial, final)
    write_atomic(checkpoint_dir / "latest", tag)


def prune_checkpoints(checkpoint_dir: Path, keep_last: int) -> None:
    """Remove all but the ``keep_last`` newest complete checkpoints (all kept when it is 0 or
    less), and any ``.partial`` one left over."""
    complete = sorted(p for p in checkpoint_dir.glob("step_*") if not p.name.endswith(".partial"))
    for old in complete[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    for stray in checkpoint_dir.glob("step_*.partial"):
        shutil.rmtree(stray, ignore_errors=True)


def intact_checkpoint(checkpoint_dir: Path, world_size: int, is_main: bool) -> str | None:
    """The checkpoint ``latest`` names or, if that one is missing or broken, the newest older
    ``step_*`` folder whose files are all there and whole; None when there is no checkpoint
    at all. Broken ones are reported in one line (by rank 0); none intact is an error."""
    latest = checkpoint_dir / "latest"
    tags = sorted(
        (p.name for p in checkpoint_dir.glob("step_*") if p.is_dir() and not p.name.endswith(".partial")),
        reverse=True,
    )
    problems = []
    if latest.is_file():
        named = latest.read_text().strip()
        tags = [tag for tag in tags if tag <= named]
        if named not in tags:
            problems.append(f"checkpoint {named} named by {latest} does not exist")
    for tag in tags:
        problem = checkpoint_problem(checkpoint_dir / tag, world_size)
        if problem is None:
            if problems and is_main:
                logger.info(f"{'; '.join(problems)}; resuming from {tag}")
            return tag
        problems.append(f"checkpoint {tag} is incomplete ({problem})")
    if problems:
        raise DcrError(
            f"no intact checkpoint in {checkpoint_dir} ({'; '.join(problems)}); "
            f"delete {checkpoint_dir} to start the stage over"
        )
    return None


def load_rank_state(folder: Path, rank: int) -> dict:
    """``rank``'s own part of the checkpoint in ``folder``: its step, random states, data position
    and counters."""
    state_file = folder / f"rank{rank}_state.safetensors"
    if not state_file.is_file():
        raise DcrError(
            f"{state_file} is missing: the checkpoint was written by a run with a different number of processes; resume with the same count"
        )
    return load_tree(state_file)


def settings_changed(
    checkpoint_dir: Path, output_dir: Path, fingerprint: dict, allow_config_change: bool, is_main: bool
) -> bool:
    """Whether ``fingerprint`` differs from the settings the checkpoints were made with (their
    ``config.json``; missing in checkpoints from before it), so that the caller records it.
    Settings that change training are refused unless ``allow_config_change``."""
    stored = checkpoint_dir / "config.json"
    before = json.loads(stored.read_text()) if stored.is_file() else None  # None: checkpoints from before config.json
    if before is not None:  # a setting added since the checkpoint was made ran at its default then
        defaults = TrainConfig()
        before = {**{key: plain(getattr(defaults, key)) for key in TRAINING_KEYS if key not in before}, **before}
    if before == fingerprint:
        return False
    changes = config_changes(before, fingerprint) if before is not None else []
    if changes:
        listed = ", ".join(f"{key}: {old!r} -> {new!r}" for key, old, new in changes)
        if not allow_config_change:
            raise DcrError(
                f"{output_dir} was trained with other settings ({listed}); restore them, "
                f"pass --allow-config-change to continue with the new ones, or delete {checkpoint_dir} to start over"
            )
        if is_main:
            logger.info(
                f"settings changed since the checkpoint ({listed}); continuing with the new ones (--allow-config-change)"
            )
    return True


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
    ZeRO-3 parameters too: every rank must call it then); returns the names loaded.

    Args:
        module: the model loaded into; every entry under ``prefix`` must name one of its parameters.
        path: the stage's ``trainable.safetensors``.
        prefix: the entries loaded; stripped from their names (e.g. ``"tower."``); empty: all.
    """
    return copy_trainable_state(module, read_trainable_state(path, prefix), prefix, str(path))


def read_trainable_state(path: str | Path, prefix: str = "") -> dict[str, torch.Tensor]:
    """The entries of a ``trainable.safetensors`` whose names start with ``prefix``; none is an error."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise DcrError(f"{path} does not exist; run the stage that writes it first")
    state = {k: v for k, v in load_file(path).items() if k.startswith(prefix)}
    if not state:
        raise DcrError(f"{path} holds no parameters under '{prefix}'; it was written by another stage")
    return state


def copy_trainable_state(module: nn.Module, state: dict[str, torch.Tensor], prefix: str, source: str) -> list[str]:
    """Copy ``state``'s entries starting with ``prefix`` into ``module``'s parameters of those names
    without it; one ``module`` lacks is an error naming ``source``.

    Args:
        module: the model whose parameters are overwritten (ZeRO-3 partitioned ones too).
        state: trained parameters by name, e.g. a stage's ``trainable.safetensors``.
        prefix: the part of each name ``module`` does not have (``tower.``); other entries are skipped.
        source: where ``state`` came from, for the error.
    """
    state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
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
            f"{source} has parameters this model lacks ({', '.join(unexpected[:3])}...); it belongs to another model"
        )
    return list(state)
