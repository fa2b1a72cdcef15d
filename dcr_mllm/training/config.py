"""Settings of one training stage, shared by every recipe (stage one and stage two)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


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
    zero_stage: Literal[0, 1, 2, 3] = 2
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
