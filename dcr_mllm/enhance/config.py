"""Stage-one config: which tower, which denoiser, the objective, the data and both stages.

``validate`` checks everything that can be checked from config files alone — paths, tower
and UNet widths against the projector — so a bad config fails in a second, before any model
is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from dcr_mllm.diffusion.denoiser import check_sd_dir, unet_cross_attention_dim
from dcr_mllm.diffusion.projector import check_widths
from dcr_mllm.errors import ConfigError
from dcr_mllm.objectives.model import ObjectiveConfig
from dcr_mllm.towers import TowerSpec, inspect_tower
from dcr_mllm.training.config import TrainConfig

STAGES = ("projector", "lora")


@dataclass
class ProjectorSettings:
    input_dim: int = 0  # 0 = the tower's global-embedding width
    output_dim: int = 0  # 0 = the UNet's cross-attention width
    hidden_dim: int = 0  # 0 = output_dim


@dataclass
class LoraSettings:
    r: int = 16
    alpha: int = 16
    dropout: float = 0.1
    targets: list[str] = field(default_factory=list)  # empty = the tower family's default


@dataclass
class DataSettings:
    #: tar shards (img2dataset layout): a directory, a file, or a brace pattern; empty = synthetic
    shards: str = ""
    image_size: int = 0  # decode size; 0 = the tower's resolution
    synthetic_samples: int = 256
    synthetic_shards: int = 8


@dataclass
class EnhanceConfig:
    tower: str = "tiny-clip"  # a tower directory or a preset name
    denoiser: str = "tiny-sd"  # a Stable Diffusion (diffusers layout) directory or a preset name
    output_dir: str = "outputs/enhance"
    seed: int = 0
    stages: list[Literal["projector", "lora"]] = field(default_factory=lambda: list(STAGES))
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    projector: ProjectorSettings = field(default_factory=ProjectorSettings)
    lora: LoraSettings = field(default_factory=LoraSettings)
    data: DataSettings = field(default_factory=DataSettings)
    projector_stage: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-4))
    lora_stage: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-5))


@dataclass(frozen=True)
class ResolvedShapes:
    tower: TowerSpec
    unet_width: int
    projector_input: int
    projector_output: int


def validate(cfg: EnhanceConfig) -> ResolvedShapes:
    """Check paths and widths from config files only; returns the resolved projector shape."""
    from dcr_mllm.presets.real import local_path

    tower = inspect_tower(cfg.tower)
    unet_width = unet_cross_attention_dim(check_sd_dir(local_path(cfg.denoiser)))
    projector_input = cfg.projector.input_dim or tower.global_dim
    projector_output = cfg.projector.output_dim or unet_width
    check_widths(tower.global_dim, projector_input, projector_output, unet_width)
    for name in ("projector_stage", "lora_stage"):
        stage = getattr(cfg, name)
        if stage.max_steps < 1 or stage.micro_batch_size < 1 or stage.grad_accum < 1:
            raise ConfigError(f"{name}.max_steps, micro_batch_size and grad_accum must be at least 1")
    if cfg.objective.name == "dcr" and cfg.objective.chunk_size < 0:
        raise ConfigError("objective.chunk_size must be 0 (unchunked) or a positive number of denoiser calls")
    return ResolvedShapes(tower, unet_width, projector_input, projector_output)
