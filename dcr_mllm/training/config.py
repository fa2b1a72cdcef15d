"""Settings of one training stage, shared by every recipe (stage one and stage two)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from dcr_mllm.errors import ConfigError


@dataclass
class TrainConfig:
    max_steps: int = 100  # optimizer steps
    #: when > 0, max_steps becomes this many passes over the data (recipes with a known data size)
    epochs: float = 0.0
    micro_batch_size: int = 8  # per process
    grad_accum: int = 1
    lr: float = 1e-4
    #: parameters whose name contains a key train at that learning rate instead (e.g. a projector)
    group_lrs: dict[str, float] = field(default_factory=dict)
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    scheduler: Literal["constant", "cosine"] = "constant"
    warmup_steps: int = 0
    warmup_ratio: float = 0.0  # used when warmup_steps is 0
    grad_clip: float = 1.0  # 0 disables clipping
    #: empty: the stage in the DeepSpeed JSON, else the recipe's default; both given must agree
    zero_stage: Literal[0, 1, 2, 3] | None = None
    #: optional DeepSpeed JSON; "auto" values in it are filled from this config
    deepspeed: str = ""
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    gradient_checkpointing: bool = False
    save_every: int = 50
    keep_last: int = 2
    log_every: int = 1
    max_nonfinite: int = 5  # abort after this many non-finite losses in a row
    num_workers: int = 2
    wandb_project: str = ""  # log to Weights & Biases as well when set


def resolve_train_config(cfg: TrainConfig, name: str, default_zero_stage: int = 2) -> TrainConfig:
    """Check every value of one stage's settings and settle the ZeRO stage, from the config alone.

    The ZeRO stage has one source: ``zero_stage``, or the DeepSpeed JSON's
    ``zero_optimization.stage``; a contradiction between the two is an error naming both.
    """
    positive = ("max_steps", "micro_batch_size", "grad_accum", "save_every", "log_every", "max_nonfinite")
    for key in positive:
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{name}.{key} must be at least 1, got {getattr(cfg, key)}")
    for key in ("keep_last", "warmup_steps", "num_workers", "epochs", "lr", "weight_decay", "grad_clip"):
        if getattr(cfg, key) < 0:
            raise ConfigError(f"{name}.{key} must be 0 or more, got {getattr(cfg, key)}")
    for key, lr in cfg.group_lrs.items():
        if not isinstance(lr, (int, float)) or lr < 0:
            raise ConfigError(f"{name}.group_lrs.{key} must be a learning rate >= 0, got {lr!r}")
    if not 0 <= cfg.warmup_ratio < 1:
        raise ConfigError(f"{name}.warmup_ratio must be in [0, 1), got {cfg.warmup_ratio}")
    if len(cfg.betas) != 2 or not all(0 <= b < 1 for b in cfg.betas):
        raise ConfigError(f"{name}.betas must be two numbers in [0, 1), e.g. [0.9, 0.999], got {cfg.betas}")
    json_stage = deepspeed_json(cfg, name).get("zero_optimization", {}).get("stage", "auto")
    if json_stage != "auto":
        if json_stage not in (0, 1, 2, 3):
            raise ConfigError(f"{cfg.deepspeed}: zero_optimization.stage must be 0-3 or \"auto\", got {json_stage!r}")
        if cfg.zero_stage is not None and cfg.zero_stage != json_stage:
            raise ConfigError(f"{name}.zero_stage is {cfg.zero_stage} but {cfg.deepspeed} says zero_optimization.stage "
                              f"{json_stage}; remove one of them or make them agree")
        cfg.zero_stage = json_stage
    if cfg.zero_stage is None:
        cfg.zero_stage = default_zero_stage
    return cfg


def deepspeed_json(cfg: TrainConfig, name: str) -> dict:
    """The stage's DeepSpeed JSON as a dict ({} without one); a missing or malformed file is a ConfigError."""
    if not cfg.deepspeed:
        return {}
    path = Path(cfg.deepspeed)
    if not path.is_file():
        raise ConfigError(f"DeepSpeed config {path} does not exist; fix {name}.deepspeed or leave it empty")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"DeepSpeed config {path} is not valid JSON ({err}); fix the file") from None
    if not isinstance(data, dict):
        raise ConfigError(f"DeepSpeed config {path} must hold a JSON object")
    return data
