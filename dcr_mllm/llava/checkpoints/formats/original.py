"""Original LLaVA checkpoints (``mm_vision_tower`` in ``config.json``). The tower directory is
copied to ``DST/vision_tower`` and ``mm_vision_tower`` points at it; tower tensors stored in the
checkpoint (``model.vision_tower.vision_tower.*``) are replaced as in any format. LLaVA-1.6 checkpoints
(``image_aspect_ratio: anyres``) keep their tiles and ``model.image_newline``; the tiles must fit the tower."""

from __future__ import annotations

import ast
import contextlib
import shutil
from pathlib import Path

import torch

from dcr_mllm.errors import DcrError
from dcr_mllm.llava.checkpoints.checkpoint import Checkpoint, Tower, read_json_object
from dcr_mllm.llava.checkpoints.compat import (
    anyres_problems,
    depth_fit,
    feature_layer_problems,
    preset_spec,
    shape_problems,
    stored_layer_count,
    tensor_problems,
    tower_that_fits,
)
from dcr_mllm.llava.checkpoints.formats.base import Changes, CheckpointFormat, Fit
from dcr_mllm.llava.shards import read_header, same_bytes, weight_files
from dcr_mllm.towers import TowerSpec, inspect_tower
from dcr_mllm.towers.clip import CLIP
from dcr_mllm.weights import refuse_pickles

PREFIX = "model.vision_tower.vision_tower."


class OriginalLlava(CheckpointFormat):
    """Original LLaVA checkpoints: ``mm_vision_tower`` names the tower, which may also be stored in the shards."""

    name, prefixes, needs_safetensors = "original", (PREFIX,), False

    def holds(self, config: dict) -> bool:
        return "mm_vision_tower" in config

    def check(self, checkpoint: Checkpoint, tower: Tower, allow_family_change: bool) -> Fit:
        config, spec = checkpoint.config, tower.spec
        fit = Fit(shape_problems({"hidden size": config.get("mm_hidden_size")}, spec))
        fit.problems += feature_layer_problems(
            "mm_vision_select_layer", config.get("mm_vision_select_layer", -2), spec.num_layers
        )
        name = str(config["mm_vision_tower"])
        old = _original_tower_spec(name, checkpoint.path)
        if old is None:  # a real preset's hub id (the published checkpoints name one): its shape is known
            old = preset_spec(name)
        # original LLaVA builds every tower as its CLIPVisionTower (llava/model/multimodal_encoder/builder.py)
        family = CLIP
        if old is not None:
            fit.problems += shape_problems(
                {"layers": old.num_layers, "patch size": old.patch_size, "image size": old.image_size}, spec
            )
            family = old.family
            fit.wants = tower_that_fits(
                family, old.image_size, old.patch_size, config.get("mm_hidden_size") or old.hidden_size, old.num_layers
            )
        else:
            fit.notes.append(
                f"note: the original tower {name} is not on this machine, so only its stored tensors and mm_hidden_size were checked"
            )
        if family.vision_model_type != spec.family.vision_model_type:
            fit.problems.append(
                f"family: checkpoint {family}, tower {spec.family}; an original LLaVA checkpoint keeps its tower family: "
                "convert it with `dcr-mllm convert-llava`, then swap with --allow-family-change"
            )
        if str(config.get("image_aspect_ratio", "")).startswith("anyres"):  # LLaVA-1.6
            select = config.get("mm_vision_select_feature", "patch")
            fit.problems += anyres_problems(
                _pinpoints(config.get("image_grid_pinpoints") or []),
                spec,
                f"mm_vision_select_feature {select!r}",
                select == "patch",
                "patch" if spec.has_cls else "cls_patch",
            )
        stored = checkpoint.tower_keys()
        if any(key.startswith(PREFIX) for key in _bin_keys(checkpoint)):
            fit.problems.append(
                "its vision tower is stored in .bin pickles; pass --allow-pickle to read them (restricted unpickler) "
                "and write the result as safetensors"
            )
        if stored and not fit.problems:
            # stored fewer layers than the tower: they are replaced by the tower's first ones (compat.depth_fit)
            kept = stored_layer_count(stored.values()) or spec.num_layers
            problems, _ = depth_fit("mm_vision_select_layer", [], kept, spec)
            fit.problems += problems or tensor_problems(checkpoint, tower)
            if kept < spec.num_layers:
                fit.notes.append(
                    f"layers: the checkpoint stores {kept} of the tower's {spec.num_layers}: replaced by the tower's "
                    f"first {kept}"
                )
        return fit

    def changes(self, checkpoint: Checkpoint, tower: Tower, dst: Path, family_change: bool) -> Changes:
        config = dict(checkpoint.config)
        config["mm_vision_tower"] = str(dst.expanduser().resolve() / "vision_tower")
        line = f"mm_vision_tower: {checkpoint.config['mm_vision_tower']} -> {config['mm_vision_tower']} (a copy of the tower)"
        return Changes(config, {}, [line], _original_notes(dst))

    def write_extra(self, tower: Tower, out: Path) -> set[str]:
        shutil.copytree(tower.path, out / "vision_tower", ignore=shutil.ignore_patterns(".*"))
        return {"vision_tower"}

    def verify_extra(self, tower: Tower, out: Path) -> str:
        count = 0
        for name in weight_files(tower.path):
            original, _ = read_header(tower.path / name)
            copied, _ = read_header(out / "vision_tower" / name)
            for key, stored in original.items():
                if key not in copied or not same_bytes(stored, copied[key]):
                    raise DcrError(f"verification failed: {out / 'vision_tower' / name} differs from the tower's {key}")
                count += 1
        return f"vision_tower/ holds the tower's {count} tensors unchanged"


def _pinpoints(value):
    """``image_grid_pinpoints`` as original LLaVA reads it: a list, or a string holding its Python literal.
    LLaVA-NeXT's ``"(1x1),...,(6x6)"`` form counts whole tiles of the tower's size, so it always fits: []."""
    if isinstance(value, str):
        try:
            return ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return [] if "x" in value else value
    return value


def _bin_keys(checkpoint: Checkpoint) -> list[str]:
    """Tensor names in an original checkpoint's .bin files, from their index or a memory-mapped load."""
    index = checkpoint.path / "pytorch_model.bin.index.json"
    if index.is_file():
        return list(read_json_object(index)["weight_map"])
    if not checkpoint.allow_pickle:
        refuse_pickles([checkpoint.path / name for name in checkpoint.bin_files])
    keys = []
    for name in checkpoint.bin_files:
        keys += list(torch.load(checkpoint.path / name, map_location="cpu", mmap=True, weights_only=True))
    return keys


def _original_tower_spec(name: str, checkpoint_dir: Path) -> TowerSpec | None:
    """Shape facts of the tower an original checkpoint names, if its config is on this machine (no
    download); a config that is there but unreadable is an error, never a guess."""
    from huggingface_hub import try_to_load_from_cache

    candidates = [Path(name).expanduser(), checkpoint_dir / name]
    with contextlib.suppress(ValueError):  # a path, not a hub id
        cached = try_to_load_from_cache(name, "config.json")
        if isinstance(cached, str):
            candidates.append(Path(cached).parent)
    for candidate in candidates:
        if (candidate / "config.json").is_file():
            try:
                return inspect_tower(candidate, allow_pickle=True)  # its weights are never read here
            except DcrError as err:
                raise DcrError(f"the checkpoint's tower {name} ({candidate}) cannot be checked: {err}") from err
    return None


def _original_notes(dst: Path) -> list[str]:
    """Original LLaVA's loader picks the LLaVA class by name: 'llava' must be in the model's directory name."""
    notes = [
        f"note: mm_vision_tower is the absolute path {dst.expanduser().resolve() / 'vision_tower'}; update it if you move DST"
    ]
    if "llava" in dst.name.lower():
        notes.append(
            "note: the directory name contains 'llava', as original LLaVA loaders (load_pretrained_model) require"
        )
    else:
        notes.append(
            f"note: original LLaVA loaders (load_pretrained_model) build a LLaVA model only when the directory name contains "
            f"'llava'; rename {dst.name} (e.g. to {dst.name}-llava) before loading it there"
        )
    return notes
