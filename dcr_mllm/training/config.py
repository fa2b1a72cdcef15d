"""Settings of one training stage, shared by every recipe (stage one and stage two)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from dcr_mllm.config import CONFIG_RELATIVE
from dcr_mllm.errors import ConfigError, DcrError
from dcr_mllm.strict import read_json


@dataclass
class TrainConfig:
    #: optimizer steps; as in HF Trainer, a positive max_steps wins over epochs
    max_steps: int = 100
    #: used when max_steps is 0: this many passes over the data (recipes with a known data size)
    epochs: float = 0.0
    micro_batch_size: int = 8  # per process
    grad_accum: int = 1
    lr: float = 1e-4
    adam_eps: float = 1e-8  # AdamW's eps
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
    #: optional DeepSpeed JSON, relative to the config file that names it; "auto" values in it are filled from this config
    deepspeed: str = field(default="", metadata=CONFIG_RELATIVE)
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

    Args:
        cfg: the stage's training settings, completed in place.
        name: the stage's section in the config (e.g. ``finetune``), as errors name it.
        default_zero_stage: the ZeRO stage when neither the config nor the DeepSpeed JSON sets one.
    """
    positive = ("micro_batch_size", "grad_accum", "save_every", "log_every", "max_nonfinite")
    for key in positive:
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{name}.{key} must be at least 1, got {getattr(cfg, key)}")
    for key in ("max_steps", "keep_last", "warmup_steps", "num_workers", "epochs", "lr", "weight_decay", "grad_clip"):
        if getattr(cfg, key) < 0:
            raise ConfigError(f"{name}.{key} must be 0 or more, got {getattr(cfg, key)}")
    for key, lr in cfg.group_lrs.items():
        if not isinstance(lr, (int, float)) or lr < 0:
            raise ConfigError(f"{name}.group_lrs.{key} must be a learning rate >= 0, got {lr!r}")
    if cfg.max_steps == 0 and cfg.epochs == 0:
        raise ConfigError(f"{name}.max_steps and {name}.epochs are both 0; set one of them (a positive max_steps wins)")
    if cfg.adam_eps <= 0:
        raise ConfigError(f"{name}.adam_eps must be positive, got {cfg.adam_eps}")
    if not 0 <= cfg.warmup_ratio < 1:
        raise ConfigError(f"{name}.warmup_ratio must be in [0, 1), got {cfg.warmup_ratio}")
    if len(cfg.betas) != 2 or not all(0 <= b < 1 for b in cfg.betas):
        raise ConfigError(f"{name}.betas must be two numbers in [0, 1), e.g. [0.9, 0.999], got {cfg.betas}")
    theirs = deepspeed_json(cfg, name)
    json_stage = theirs.get("zero_optimization", {}).get("stage", "auto")
    if json_stage != "auto":
        if json_stage not in (0, 1, 2, 3):
            raise ConfigError(f'{cfg.deepspeed}: zero_optimization.stage must be 0-3 or "auto", got {json_stage!r}')
        if cfg.zero_stage is not None and cfg.zero_stage != json_stage:
            raise ConfigError(
                f"{name}.zero_stage is {cfg.zero_stage} but {cfg.deepspeed} says zero_optimization.stage "
                f"{json_stage}; remove one of them or make them agree"
            )
        cfg.zero_stage = json_stage
    if cfg.zero_stage is None:
        cfg.zero_stage = default_zero_stage
    json_bf16 = theirs.get("bf16", {}).get("enabled", "auto") if isinstance(theirs.get("bf16"), dict) else "auto"
    if cfg.precision == "auto" and isinstance(json_bf16, bool):  # the config leaves it open: the file decides
        cfg.precision = "bf16" if json_bf16 else "fp32"
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and _cuda())
    conflicts = [
        f"{key}: {theirs_value!r} vs {config_key} {ours_value!r}"
        for key, theirs_value, config_key, ours_value in _json_conflicts(theirs, owned_values(cfg, world_size, bf16))
    ]
    if "scheduler" in theirs:
        conflicts.append(
            f"scheduler: {theirs['scheduler']!r} vs {name}.scheduler {cfg.scheduler!r} (the config's schedule runs)"
        )
    if conflicts:
        raise ConfigError(
            f"{cfg.deepspeed} contradicts {name}: {'; '.join(conflicts)}; set each value in one place "
            f'("auto" in the JSON takes the config\'s)'
        )
    return cfg


def steps_governor(cfg: TrainConfig) -> str:
    """Which setting decides the number of optimizer steps (``--print-config`` says so)."""
    return (
        f"max_steps ({cfg.max_steps} steps)" if cfg.max_steps > 0 else f"epochs ({cfg.epochs:g} passes over the data)"
    )


def owned_values(cfg: TrainConfig, world_size: int, bf16: bool) -> dict[str, tuple[str, object]]:
    """{DeepSpeed JSON key (dotted): (the config setting that decides it, its value)}: the keys the
    engine fills from the config, the same values ``deepspeed_config`` hands DeepSpeed."""
    return {
        "train_micro_batch_size_per_gpu": ("micro_batch_size", cfg.micro_batch_size),
        "gradient_accumulation_steps": ("grad_accum", cfg.grad_accum),
        "train_batch_size": (
            f"micro_batch_size x grad_accum x {world_size} ranks",
            cfg.micro_batch_size * cfg.grad_accum * world_size,
        ),
        "gradient_clipping": ("grad_clip", cfg.grad_clip),
        "zero_optimization.stage": ("zero_stage", cfg.zero_stage),
        "bf16.enabled": ("precision", bf16),
        "fp16.enabled": ("precision", False),
        "optimizer.type": ("the engine's optimizer", "AdamW"),
        "optimizer.params.lr": ("lr", cfg.lr),
        "optimizer.params.betas": ("betas", list(cfg.betas)),
        "optimizer.params.eps": ("adam_eps", cfg.adam_eps),
        "optimizer.params.weight_decay": ("weight_decay", cfg.weight_decay),
    }


def _json_conflicts(theirs: dict, owned: dict[str, tuple[str, object]], prefix: str = ""):
    """(json key, json value, config key, config value) for each non-"auto" value that disagrees."""
    for key, value in theirs.items():
        dotted = prefix + key
        if isinstance(value, dict):
            yield from _json_conflicts(value, owned, dotted + ".")
        elif dotted in owned and value != "auto":
            config_key, ours = owned[dotted]
            same = value.lower() == ours.lower() if isinstance(value, str) and isinstance(ours, str) else value == ours
            if not same:
                yield dotted, value, config_key, ours
        elif dotted.startswith("optimizer.params.") and value != "auto":
            yield dotted, value, "nothing (the engine's AdamW takes lr, betas, eps, weight_decay)", None


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def deepspeed_json(cfg: TrainConfig, name: str) -> dict:
    """The stage's DeepSpeed JSON as a dict ({} without one); a missing or malformed file is a ConfigError."""
    if not cfg.deepspeed:
        return {}
    path = Path(cfg.deepspeed)
    if not path.is_file():
        raise ConfigError(f"DeepSpeed config {path} does not exist; fix {name}.deepspeed or leave it empty")
    try:
        data = read_json(path)
    except DcrError as err:
        raise ConfigError(f"DeepSpeed config {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"DeepSpeed config {path} must hold a JSON object")
    return data
