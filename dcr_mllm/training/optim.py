"""The optimizer and learning-rate schedule every stage trains with, from the config alone."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from dcr_mllm.training.config import TrainConfig


def lr_lambda(cfg: TrainConfig) -> Callable[[int], float]:
    """Linear warm-up, then constant or cosine decay to zero at max_steps."""
    warmup = cfg.warmup_steps or math.ceil(cfg.warmup_ratio * cfg.max_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.scheduler == "constant":
            return 1.0
        progress = (step - warmup) / max(1, cfg.max_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    """Trainable parameters, split by ``cfg.group_lrs`` (first matching key wins)."""
    groups: dict[float, list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            lr = next((lr for key, lr in cfg.group_lrs.items() if key in name), cfg.lr)
            groups.setdefault(lr, []).append(param)
    return [{"params": params, "lr": lr} for lr, params in groups.items()]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """The optimizer every stage trains with: AdamW over ``param_groups``, from the config alone."""
    return torch.optim.AdamW(
        param_groups(model, cfg), lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.adam_eps, weight_decay=cfg.weight_decay
    )
