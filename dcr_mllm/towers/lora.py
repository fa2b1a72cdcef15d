"""LoRA on a tower's vision encoder only (peft), and merging it back for export.

Targets are leaf-module names (``q_proj``, ``fc1``, ...) matched inside the vision encoder, so
a CLIP text tower that shares those names is never adapted. After training, ``merge_lora``
folds the adapters into the base weights and removes them: the tower is a plain model again.
"""

from __future__ import annotations

from torch import nn

from dcr_mllm.errors import DcrError
from dcr_mllm.towers.base import VisionTower


def lora_module_names(tower: VisionTower, targets: tuple[str, ...] | list[str] | None = None) -> list[str]:
    """Full names (within the vision encoder) of the modules LoRA will adapt."""
    targets = tuple(targets or tower.default_lora_targets)
    names = _linear_names(tower.vision_encoder)
    chosen = [name for name in names if name.rsplit(".", 1)[-1] in targets]
    matched = {name.rsplit(".", 1)[-1] for name in chosen}
    unmatched = [t for t in targets if t not in matched]
    if unmatched:
        available = sorted({n.rsplit(".", 1)[-1] for n in names if not n.rsplit(".", 1)[-1].isdigit()})
        raise DcrError(
            f"LoRA target {', '.join(map(repr, unmatched))} matches no module in the {tower.spec.family} vision encoder; "
            f"choose among: {', '.join(available)}"
        )
    return chosen


def _linear_names(encoder: nn.Module) -> list[str]:
    """Linear layers LoRA can adapt. nn.MultiheadAttention (open_clip) reads its out_proj
    weight directly instead of calling it, so a LoRA there would never run: it is left out."""
    fused = {name for name, m in encoder.named_modules() if isinstance(m, nn.MultiheadAttention)}
    return [
        name for name, m in encoder.named_modules()
        if isinstance(m, nn.Linear) and name.rpartition(".")[0] not in fused
    ]


def apply_lora(tower: VisionTower, r: int = 16, alpha: int = 16, dropout: float = 0.1,
               targets: tuple[str, ...] | list[str] | None = None) -> list[str]:
    """Insert LoRA adapters into the vision encoder; only they are trainable afterwards."""
    from peft import (  # heavy: imported when LoRA is used
        LoraConfig,
        inject_adapter_in_model,
    )

    names = lora_module_names(tower, targets)
    tower.requires_grad_(False)
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=names, bias="none")
    inject_adapter_in_model(config, tower.vision_encoder)
    for name, param in tower.vision_encoder.named_parameters():
        param.requires_grad_("lora_" in name)
    return names


def merge_lora(tower: VisionTower) -> int:
    """Fold the tower's LoRA adapters into its vision encoder; returns how many were merged."""
    return merge_adapters(tower.vision_encoder)


def merge_adapters(module: nn.Module) -> int:
    """Fold every LoRA adapter inside ``module`` into its base layer and put the base layer back."""
    from peft.tuners.lora import LoraLayer

    merged = 0
    for name, layer in list(module.named_modules()):
        if not isinstance(layer, LoraLayer):
            continue
        layer.merge(safe_merge=True)
        parent_name, _, child = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, child, layer.get_base_layer())
        merged += 1
    return merged
