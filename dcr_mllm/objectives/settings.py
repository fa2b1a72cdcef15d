"""Each objective's settings: one dataclass per objective, chosen by ``name``.

``objective:`` in a stage-one config is a tagged section (``dcr_mllm.config``): its ``name`` picks
the dataclass, and a key that objective does not read is refused like any unknown key. A new
objective, or a new setting of one, touches that objective's dataclass alone.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import Literal

from dcr_mllm.diffusion.denoiser import TargetKind
from dcr_mllm.errors import ConfigError
from dcr_mllm.objectives.augment import AugmentConfig


@dataclass
class ObjectiveSettings:
    """What every objective reads: the diffusion inputs and the form of the condition."""

    name: str = ""  # the objective; each reads its own keys below
    #: diffusion target: follow the scheduler (auto) or force one; "velocity" is upstream's choice
    target: TargetKind = "auto"
    #: resolution fed to the VAE; 0 = the tower's resolution
    vae_image_size: int = 0
    #: encode the denoiser's empty prompt with its padding mask (upstream) or without (the SD pipeline)
    empty_prompt_mask: bool = False
    #: what conditions the denoiser: the global embedding added to every context token (upstream DCR),
    #: or patch tokens, each projected and added to one context token (``tokens``)
    condition: Literal["global", "tokens"] = "global"
    condition_layer: int = -2  # tokens: the hidden layer they come from (-2: LLaVA's feature layer)
    condition_tokens: int = 0  # tokens: N random patches per image and view (0: all of them)

    def check(self) -> None:
        """Refuse, naming the key, a value nothing reads or no run can use (before any model is built)."""
        keys = token_only_keys(self)
        if keys:
            one = len(keys) == 1
            raise ConfigError(
                f"{', '.join(keys)} {'is' if one else 'are'} read only with objective.condition=tokens; "
                f"set objective.condition=tokens or remove {'it' if one else 'them'}"
            )


@dataclass
class DcrSettings(ObjectiveSettings):
    """DCR: each image's prediction against its augmented view's and the other images' (``dcr.py``)."""

    name: Literal["dcr"] = "dcr"
    tau: float = 0.1  # the temperature of the contrast over predictions
    #: denoiser calls per chunk for the DCR predictions (B*B+B local, B*(K+2) global); 0 = one unchunked batch
    chunk_size: int = 0
    checkpoint_chunks: bool = True  # recompute each chunk in the backward pass (read with a chunk_size)
    #: each anchor's DCR negatives: the other B - 1 images of its rank (local), or num_negatives
    #: sampled from every rank's images (global; conditions gathered with autograd)
    negatives: Literal["local", "global"] = "local"
    #: K for negatives=global, B * (K + 2) UNet calls per rank; 0 = the micro batch size minus one
    num_negatives: int = 0
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def check(self) -> None:
        super().check()
        if self.tau <= 0:
            raise ConfigError(f"objective.tau must be positive, got {self.tau}")
        if self.chunk_size < 0:
            raise ConfigError("objective.chunk_size must be 0 (unchunked) or a positive number of denoiser calls")
        if not self.chunk_size and not self.checkpoint_chunks:
            raise ConfigError(
                "objective.checkpoint_chunks is not read by objective.name=dcr without objective.chunk_size; "
                "set objective.chunk_size or remove it"
            )
        if self.num_negatives < 0 or (self.num_negatives and self.negatives == "local"):
            raise ConfigError(
                f"objective.num_negatives={self.num_negatives}: set 0 (the micro batch size minus one), "
                "or a positive K with objective.negatives=global"
            )


@dataclass
class ReconstructionSettings(ObjectiveSettings):
    """Plain diffusion reconstruction conditioned on each image (the ablation's baseline)."""

    name: Literal["reconstruction"] = "reconstruction"


@dataclass
class NaiveSettings(ObjectiveSettings):
    """Reconstruction plus InfoNCE between two views' global embeddings (the ablation's naive contrast)."""

    name: Literal["naive"] = "naive"
    naive_weight: float = 1.0  # the InfoNCE term's weight beside reconstruction
    naive_tau: float = 0.07  # the InfoNCE temperature
    augment: AugmentConfig = field(default_factory=AugmentConfig)


#: the ``objective`` section of a stage-one config: one of these, by ``name``
ObjectiveConfig = DcrSettings | ReconstructionSettings | NaiveSettings
#: objective name -> its settings' dataclass
SETTINGS: dict[str, type[ObjectiveSettings]] = {cls().name: cls for cls in typing.get_args(ObjectiveConfig)}


def objective_settings(name: str = "dcr", **settings) -> ObjectiveConfig:
    """The settings of objective ``name`` (``objective_settings("naive", naive_weight=2.0)``)."""
    return SETTINGS[name](**settings)


def token_only_keys(cfg: ObjectiveSettings) -> list[str]:
    """The token form's settings (dotted, under ``objective.``) set away from their defaults while
    the condition is global, where nothing reads them."""
    if cfg.condition == "tokens":
        return []
    default = type(cfg)()
    return [
        f"objective.{key}"
        for key in ("condition_layer", "condition_tokens")
        if getattr(cfg, key) != getattr(default, key)
    ]
