"""LoRA on a tower's vision side (peft), and merging it back for export.

Targets are leaf-module names (``q_proj``, ``fc1``, ``visual_projection``, ...) matched inside a
scope of the vision side, so a CLIP text tower that shares those names is never adapted:

* ``encoder``: the transformer blocks only (``tower.vision_encoder``);
* ``vision``: everything the global embedding runs through (``tower.vision_parts``): the blocks,
  SigLIP's attention-pooling head, CLIP's ``visual_projection``. Upstream DCR's scope: it wraps the
  whole ``CLIPModel`` with ``target_modules="all-linear"`` and ``SiglipModel`` with
  q/k/v/out_proj/fc1/fc2 (boyuh/DCR train_OpenAICLIP_stage2.py:126-133,
  train_SigLIP_stage2.py:123). Training the vision side alone is equivalent: upstream's loss
  never runs the text tower, so its text-side adapters and biases get no gradient, and AdamW
  skips a parameter without one (no step, no weight decay) and clipping sees only the vision
  gradients; they stay at their initial values (lora_B = 0, a zero update when merged).
  ``tests/enhance/test_upstream_recipe.py`` checks both runs end with the same vision weights.

``bias="lora_only"`` (upstream's) also trains the bias of every targeted layer. After training,
``merge_lora`` folds the adapters into the base weights and removes them: the tower is a plain
model again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from torch import nn

from dcr_mllm.errors import DcrError
from dcr_mllm.towers.base import VisionTower

LoraScope = Literal["encoder", "vision"]
LoraBias = Literal["none", "lora_only"]


@dataclass
class LoraSettings:
    r: int = 16
    alpha: int = 16
    dropout: float = 0.1
    targets: list[str] = field(default_factory=list)  # empty = the tower family's default
    #: encoder: the transformer blocks; vision: also SigLIP's pooling head and CLIP's visual_projection
    scope: LoraScope = "encoder"
    bias: LoraBias = "none"  # lora_only also trains the targeted layers' biases


def _scope_linears(tower: VisionTower, scope: LoraScope) -> list[tuple[str, nn.Linear, bool]]:
    """(name in ``tower.model``, layer, whether a LoRA there would run) of every linear layer in scope.

    nn.MultiheadAttention (open_clip's blocks, SigLIP's pooling head) reads its out_proj weight
    directly instead of calling it, so a LoRA there would never run; its bias is still used.
    """
    roots = [tower.vision_encoder] if scope == "encoder" else tower.vision_parts
    inside = {id(m) for root in roots for m in root.modules()}
    fused = {name for name, m in tower.model.named_modules() if isinstance(m, nn.MultiheadAttention)}
    return [
        (name, m, name.rpartition(".")[0] not in fused)
        for name, m in tower.model.named_modules()
        if isinstance(m, nn.Linear) and id(m) in inside
    ]


def _targeted(tower: VisionTower, targets, scope: LoraScope) -> list[tuple[str, nn.Linear, bool]]:
    targets = tuple(targets or tower.default_lora_targets)
    linears = _scope_linears(tower, scope)
    chosen = [item for item in linears if item[0].rsplit(".", 1)[-1] in targets]
    matched = {name.rsplit(".", 1)[-1] for name, _, runs in chosen if runs}
    unmatched = [t for t in targets if t not in matched]
    if unmatched:
        available = sorted(
            {n.rsplit(".", 1)[-1] for n, _, runs in linears if runs and not n.rsplit(".", 1)[-1].isdigit()}
        )
        raise DcrError(
            f"LoRA target {', '.join(map(repr, unmatched))} matches no module in the {tower.spec.family} "
            f"vision side (lora.scope {scope}); choose among: {', '.join(available)}"
        )
    return chosen


def lora_module_names(
    tower: VisionTower, targets: tuple[str, ...] | list[str] | None = None, scope: LoraScope = "encoder"
) -> list[str]:
    """Full names (within ``tower.model``) of the modules LoRA will adapt.

    Args:
        tower: the tower to adapt.
        targets: leaf-module names to adapt (None or empty: the family's ``default_lora_targets``).
        scope: ``encoder`` (the transformer blocks) or ``vision`` (also the pooling head and projection).
    """
    return [name for name, _, runs in _targeted(tower, targets, scope) if runs]


def apply_lora(tower: VisionTower, settings: LoraSettings | None = None) -> list[str]:
    """Insert LoRA adapters; only they (and, with ``bias="lora_only"``, the targeted layers' biases) train."""
    from peft import (  # heavy: imported when LoRA is used
        LoraConfig,
        inject_adapter_in_model,
    )

    lora = settings or LoraSettings()
    chosen = _targeted(tower, lora.targets, lora.scope)
    names = [name for name, _, runs in chosen if runs]
    tower.requires_grad_(False)
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=names, bias="none")
    inject_adapter_in_model(config, tower.model)
    for name, param in tower.model.named_parameters():
        param.requires_grad_("lora_" in name)
    # lora_only: peft's rule, which also reaches a fused out_proj: its bias is a LoRA layer's bias there
    if lora.bias == "lora_only":
        for _, layer, _ in chosen:
            if layer.bias is not None:
                layer.bias.requires_grad_(True)
    return names


def merge_lora(tower: VisionTower) -> int:
    """Fold the tower's LoRA adapters into its model; returns how many were merged."""
    return merge_adapters(tower.model)


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
