"""The tower a LoRA stage's trained parameters make: base tower, LoRA, those weights, merged.

One path for the exported tower (``export.export_tower``) and the tower evaluated while the LoRA
stage trains (``watch.TowerWatch``), so what is evaluated is what is exported.
"""

from __future__ import annotations

from torch import Tensor

from dcr_mllm.enhance.config import EnhanceConfig
from dcr_mllm.towers import VisionTower, apply_lora, load_tower, merge_lora
from dcr_mllm.training.checkpoints import copy_trainable_state


def merged_tower(
    cfg: EnhanceConfig, state: dict[str, Tensor], into: VisionTower | None = None, source: str = "the trained state"
) -> tuple[VisionTower, int]:
    """The full base tower (text side included) with ``state`` merged into its vision parts, and how
    many LoRA layers were merged.

    Args:
        cfg: the run's config (its tower and LoRA settings).
        state: the LoRA stage's trained parameters, named as in its ``trainable.safetensors`` (``tower.``...).
        into: a full tower loaded before whose vision parts are overwritten, instead of loading one.
        source: where ``state`` came from, named by the error for a parameter the tower lacks.
    """
    trained = load_tower(cfg.tower, vision_only=True)  # the structure the LoRA stage trains
    apply_lora(trained, cfg.lora)
    copy_trainable_state(trained, state, "tower.", source)
    merged = merge_lora(trained)
    tower = into if into is not None else load_tower(cfg.tower)  # the full model, in its own format
    for part, trained_part in zip(tower.vision_parts, trained.vision_parts, strict=True):  # encoder, head, projection
        part.load_state_dict(trained_part.state_dict())
    return tower, merged
