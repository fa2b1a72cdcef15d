"""Vision towers: one interface over HF CLIP/MetaCLIP, SigLIP and open_clip models.

``inspect_tower(path)`` reads shape facts from config files only (cheap: configs are checked
against each other before any model is built); ``load_tower(path)`` builds the model.
"""

from __future__ import annotations

from pathlib import Path

import torch

from dcr_mllm.errors import DcrError
from dcr_mllm.towers.base import TowerSpec, VisionTower
from dcr_mllm.towers.hf import HFTower, read_hf_spec
from dcr_mllm.towers.lora import apply_lora, merge_lora
from dcr_mllm.towers.openclip import CONFIG_NAME as OPEN_CLIP_CONFIG
from dcr_mllm.towers.openclip import OpenClipTower, read_open_clip_spec

__all__ = ["TowerSpec", "VisionTower", "inspect_tower", "load_tower", "apply_lora", "merge_lora", "resolve_tower_path"]


def resolve_tower_path(name_or_path: str | Path) -> Path:
    """A local tower directory, from a path or a preset name (see ``dcr_mllm.presets``)."""
    from dcr_mllm.presets.real import local_path

    path = local_path(name_or_path)
    if not path.is_dir():
        raise DcrError(f"tower {name_or_path} is not a local directory; download it first or give a preset name")
    return path


def inspect_tower(name_or_path: str | Path) -> TowerSpec:
    path = resolve_tower_path(name_or_path)
    if (path / OPEN_CLIP_CONFIG).is_file():
        return read_open_clip_spec(path)
    if (path / "config.json").is_file():
        return read_hf_spec(path)
    raise DcrError(f"{path} is not a tower directory: it has neither config.json (HF) nor {OPEN_CLIP_CONFIG} (open_clip)")


def load_tower(name_or_path: str | Path, dtype: torch.dtype = torch.float32, vision_only: bool = False) -> VisionTower:
    """Build a tower; ``vision_only`` leaves out the text side (training and LLaVA need none)."""
    spec = inspect_tower(name_or_path)
    path = resolve_tower_path(name_or_path)
    tower_class = OpenClipTower if spec.family == "open_clip" else HFTower
    return tower_class.from_pretrained(path, dtype=dtype, vision_only=vision_only)
