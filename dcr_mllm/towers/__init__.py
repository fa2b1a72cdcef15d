"""Vision towers: one interface over HF CLIP/MetaCLIP, SigLIP and open_clip models.

``inspect_tower(path)`` reads shape facts from config files only (cheap: configs are checked
against each other before any model is built); ``load_tower(path)`` builds the model. Each family
is one module that registers its ``TowerFamily`` (``towers.registry``); importing this package
registers the shipped ones.
"""

from __future__ import annotations

from pathlib import Path

import torch

from dcr_mllm.errors import DcrError
from dcr_mllm.towers import clip, openclip, siglip  # noqa: F401  (each registers its family)
from dcr_mllm.towers.base import TowerFamily, TowerSpec, VisionTower
from dcr_mllm.towers.lora import apply_lora, merge_lora
from dcr_mllm.towers.registry import FAMILIES, family_of_dir, register_family
from dcr_mllm.weights import check_model_dir

__all__ = [
    "FAMILIES",
    "TowerFamily",
    "TowerSpec",
    "VisionTower",
    "apply_lora",
    "inspect_tower",
    "load_tower",
    "merge_lora",
    "register_family",
    "resolve_tower_path",
]


def resolve_tower_path(name_or_path: str | Path) -> Path:
    """A local tower directory, from a path or a preset name (see ``dcr_mllm.presets``)."""
    from dcr_mllm.presets.real import local_path

    path = local_path(name_or_path)
    if not path.is_dir():
        raise DcrError(f"tower {name_or_path} is not a local directory; download it first or give a preset name")
    return path


def inspect_tower(name_or_path: str | Path, allow_pickle: bool = False) -> TowerSpec:
    """Shape facts from the config files, after checking every weight and JSON file of the directory
    (``dcr_mllm.weights.check_model_dir``); pickled weights only with ``allow_pickle``."""
    path = check_model_dir(resolve_tower_path(name_or_path), allow_pickle)
    try:
        family = family_of_dir(path)
        return family.read_spec(path, family)
    except (KeyError, TypeError, AttributeError) as err:
        raise DcrError(
            f"{path} has an incomplete tower config ({type(err).__name__}: {err}); re-download or re-save the tower"
        ) from err


def load_tower(
    name_or_path: str | Path,
    dtype: torch.dtype = torch.float32,
    vision_only: bool = False,
    ds_config: dict | None = None,
    allow_pickle: bool = False,
) -> VisionTower:
    """Build a tower; ``vision_only`` leaves out the text side (training and LLaVA need none).

    With ``ds_config`` (the engine's ZeRO-3 config) a HF tower is built partitioned, in that
    config's dtype, by transformers' ZeRO-3 loading; every rank must call it together then. It
    needs ``vision_only`` for CLIP: DeepSpeed cannot partition the 0-dim ``logit_scale``. An
    open_clip tower is built whole (the engine partitions it).

    Args:
        name_or_path: the tower's directory or a preset name.
        dtype: the weights' dtype (without ``ds_config``).
        vision_only: leave out the text side.
        ds_config: the engine's ZeRO-3 config, or None to build the tower whole here.
        allow_pickle: load .bin/.pt weights (restricted unpickler) instead of refusing them.
    """
    spec = inspect_tower(name_or_path, allow_pickle)
    path = resolve_tower_path(name_or_path)
    tower_class = spec.family.tower_class
    if ds_config is None or spec.family.built_whole:
        return tower_class.from_pretrained(path, dtype=dtype, vision_only=vision_only)
    from dcr_mllm.training.zero import transformers_zero3

    with transformers_zero3(ds_config):
        return tower_class.from_pretrained(path, dtype=dtype, vision_only=vision_only)
