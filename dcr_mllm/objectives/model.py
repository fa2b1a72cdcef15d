"""One training step's forward pass for stage one: images in, objective out.

``EnhanceModel`` holds the tower, the projector and the frozen denoiser, and is what the
training engine wraps (DeepSpeed needs one module whose forward returns the loss). Which of
its parameters train is decided by the stage recipe, not here: the forward runs the tower
without autograd when nothing in it trains, which is the projector stage's saving.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from dcr_mllm.diffusion.denoiser import FrozenDenoiser, TargetKind, resize_for
from dcr_mllm.diffusion.projector import ConditionProjector
from dcr_mllm.objectives.augment import AugmentConfig, positive_view
from dcr_mllm.objectives.baselines import info_nce, reconstruction_loss
from dcr_mllm.objectives.dcr import contrastive_loss, dcr_loss, dcr_pairs, predict_pairs
from dcr_mllm.objectives.negatives import (
    gather_with_grad,
    sample_negatives,
    sampled_pairs,
)
from dcr_mllm.towers.base import VisionTower


@dataclass
class ObjectiveConfig:
    name: Literal["dcr", "reconstruction", "naive"] = "dcr"
    tau: float = 0.1
    #: diffusion target: follow the scheduler (auto) or force one; "velocity" is upstream's choice
    target: TargetKind = "auto"
    #: denoiser calls per chunk for the DCR predictions (B*B+B local, B*(K+2) global); 0 = one unchunked batch
    chunk_size: int = 0
    checkpoint_chunks: bool = True
    #: each anchor's DCR negatives: the other B - 1 images of its rank (local), or num_negatives
    #: sampled from every rank's images (global; conditions gathered with autograd)
    negatives: Literal["local", "global"] = "local"
    #: K for negatives=global, B * (K + 2) UNet calls per rank; 0 = the micro batch size minus one
    num_negatives: int = 0
    naive_weight: float = 1.0
    naive_tau: float = 0.07
    #: resolution fed to the VAE; 0 = the tower's resolution
    vae_image_size: int = 0
    #: encode the denoiser's empty prompt with its padding mask (upstream) or without (the SD pipeline)
    empty_prompt_mask: bool = False
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    #: what conditions the denoiser: the global embedding added to every context token (upstream DCR),
    #: or patch tokens, each projected and added to one context token (``tokens``)
    condition: Literal["global", "tokens"] = "global"
    condition_layer: int = -2  # tokens: the hidden layer they come from (-2: LLaVA's feature layer)
    condition_tokens: int = 0  # tokens: N random patches per image and view (0: all of them)


def unread_keys(cfg: ObjectiveConfig) -> list[str]:
    """The fields set away from their defaults that ``cfg.name`` would silently ignore (dotted,
    under ``objective.``); ``checkpoint_chunks`` is read only with a ``chunk_size``, the
    ``condition_*`` settings only with ``condition: tokens``."""
    default = ObjectiveConfig()
    unread = list(OBJECTIVES[cfg.name].unread) + (
        ["checkpoint_chunks"] if cfg.name == "dcr" and not cfg.chunk_size else []
    )
    unread += ["condition_layer", "condition_tokens"] if cfg.condition == "global" else []
    keys = []
    for name in unread:
        ours, theirs = getattr(cfg, name), getattr(default, name)
        if dataclasses.is_dataclass(ours):
            keys += [
                f"{name}.{f.name}" for f in dataclasses.fields(ours) if getattr(ours, f.name) != getattr(theirs, f.name)
            ]
        elif ours != theirs:
            keys.append(name)
    return [f"objective.{key}" for key in keys]


class EnhanceModel(nn.Module):
    def __init__(
        self, tower: VisionTower, projector: ConditionProjector, denoiser: FrozenDenoiser, config: ObjectiveConfig
    ):
        super().__init__()
        self.tower, self.projector, self.denoiser, self.config = tower, projector, denoiser, config

    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, float]]:
        """images: [B, 3, H, W] in [0, 1]. Returns the loss and scalars to log."""
        cfg = self.config
        objective = OBJECTIVES[cfg.name]
        batch = images.shape[0]
        views = [self.tower.normalize(images)]
        if objective.two_views:
            views.append(positive_view(images, self.tower.normalize, cfg.augment, generator))
        tower_trains = any(p.requires_grad for p in self.tower.parameters())
        with torch.set_grad_enabled(tower_trains and torch.is_grad_enabled()):
            pixels = torch.cat(views)  # one tower call for both views
            embeddings = (
                self.tower.global_embedding(pixels) if cfg.condition == "global" or objective.reads_embeddings else None
            )
            conditions = embeddings if cfg.condition == "global" else self.condition_tokens(pixels, generator)
        projector_dtype = next(self.projector.parameters()).dtype  # bf16 under DeepSpeed's bf16 mode

        vae_size = cfg.vae_image_size or self.tower.spec.image_size
        latents = self.denoiser.encode(resize_for(images, vae_size), generator).float()
        noise = torch.randn(latents.shape, generator=generator).to(latents)
        timesteps = torch.randint(0, self.denoiser.num_timesteps, (batch,), generator=generator).to(latents.device)
        noisy = self.denoiser.add_noise(latents, noise, timesteps)
        target = self.denoiser.target(latents, noise, timesteps, cfg.target)
        return objective.loss(
            self, StepInputs(conditions.to(projector_dtype), embeddings, noisy, timesteps, target, generator)
        )

    def reconstruction(self, inputs: StepInputs) -> Tensor:
        """The denoiser's loss conditioned on the base views (plain diffusion reconstruction)."""
        batch = inputs.noisy.shape[0]
        contexts = self.projector(inputs.conditions, self.denoiser.empty_context)
        prediction = self.denoiser.predict(inputs.noisy, inputs.timesteps, contexts[:batch])
        return reconstruction_loss(prediction, inputs.target)

    def condition_tokens(self, pixels: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """[2B, N, hidden]: patch tokens of ``condition_layer``, ``condition_tokens`` of them per
        image drawn without replacement (in patch order) from ``generator``, or all of them."""
        tokens = self.tower.patch_features(pixels, self.config.condition_layer)
        keep = self.config.condition_tokens
        if not keep or keep >= tokens.shape[1]:
            return tokens
        order = (
            torch.rand(tokens.shape[:2], generator=generator)
            .argsort(dim=1)[:, :keep]
            .sort(dim=1)
            .values.to(tokens.device)
        )
        return tokens.gather(1, order[..., None].expand(-1, -1, tokens.shape[-1]))

    def dcr_objective(
        self,
        embeddings: Tensor,
        noisy: Tensor,
        timesteps: Tensor,
        target: Tensor,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """The DCR loss once everything random but the negatives' draw is fixed: conditions
        [2B, in] or, with ``condition: tokens``, [2B, N, in] (base views, then augmented views), this rank's noisy latents, timesteps and targets [B, ...].
        Callable with given tensors, so one rank of B and several ranks of fewer can be compared."""
        cfg = self.config
        batch = noisy.shape[0]
        projected = self.projector.project(embeddings)  # [2B, cross] or [2B, N, cross]: what is gathered across ranks
        empty = self.denoiser.empty_context
        if cfg.negatives == "local":
            contexts = self.projector.broadcast(projected, empty)
            pairs = dcr_pairs(batch, device=noisy.device)
            preds = predict_pairs(
                self.denoiser.predict, noisy, timesteps, contexts, pairs, cfg.chunk_size, cfg.checkpoint_chunks
            )
            pairwise = preds[: batch * batch].view(batch, batch, *preds.shape[1:])
            return dcr_loss(pairwise, preds[batch * batch :], target, cfg.tau)
        gathered, offset = gather_with_grad(projected[:batch])  # every rank's base-view conditions
        total = gathered.shape[0]
        negatives = sample_negatives(batch, total, offset, cfg.num_negatives or batch - 1, generator)
        pairs = sampled_pairs(batch, total, offset, negatives).to(noisy.device)
        contexts = self.projector.broadcast(torch.cat([gathered, projected[batch:]]), empty)
        preds = predict_pairs(
            self.denoiser.predict, noisy, timesteps, contexts, pairs, cfg.chunk_size, cfg.checkpoint_chunks
        )
        negative_preds = preds[2 * batch :].view(batch, negatives.shape[1], *preds.shape[1:])
        return contrastive_loss(preds[:batch], preds[batch : 2 * batch], target, negative_preds, cfg.tau)


@dataclass(frozen=True)
class StepInputs:
    """What every objective is given: conditions [V*B, ...] (base views, then augmented views when
    the objective takes two), the global embeddings where read, and this rank's diffusion inputs."""

    conditions: Tensor
    embeddings: Tensor | None
    noisy: Tensor
    timesteps: Tensor
    target: Tensor
    generator: torch.Generator | None


def _dcr(model: EnhanceModel, inputs: StepInputs) -> tuple[Tensor, dict[str, float]]:
    loss = model.dcr_objective(inputs.conditions, inputs.noisy, inputs.timesteps, inputs.target, inputs.generator)
    return loss, {"loss": loss.item()}


def _reconstruction(model: EnhanceModel, inputs: StepInputs) -> tuple[Tensor, dict[str, float]]:
    loss = model.reconstruction(inputs)
    return loss, {"loss": loss.item()}


def _naive(model: EnhanceModel, inputs: StepInputs) -> tuple[Tensor, dict[str, float]]:
    """Reconstruction plus InfoNCE between the two views' global embeddings (whatever the condition form)."""
    cfg, batch = model.config, inputs.noisy.shape[0]
    recon = model.reconstruction(inputs)
    contrast = info_nce(inputs.embeddings[:batch], inputs.embeddings[batch:], cfg.naive_tau)
    loss = recon + cfg.naive_weight * contrast
    return loss, {"loss": loss.item(), "reconstruction": recon.item(), "contrastive": contrast.item()}


@dataclass(frozen=True)
class Objective:
    """A stage-one objective: its loss, what its forward needs, and the settings it never reads."""

    loss: Callable[[EnhanceModel, StepInputs], tuple[Tensor, dict[str, float]]]
    two_views: bool  # an augmented view of every image beside the base view
    reads_embeddings: bool  # the global embeddings, whatever the condition form
    unread: tuple[str, ...]  # ObjectiveConfig fields its forward never reads


#: objective name (``objective.name``) -> the objective
OBJECTIVES: dict[str, Objective] = {
    "dcr": Objective(_dcr, two_views=True, reads_embeddings=False, unread=("naive_weight", "naive_tau")),
    "reconstruction": Objective(
        _reconstruction,
        two_views=False,
        reads_embeddings=False,
        unread=(
            "tau",
            "chunk_size",
            "checkpoint_chunks",
            "negatives",
            "num_negatives",
            "naive_weight",
            "naive_tau",
            "augment",
        ),
    ),
    "naive": Objective(
        _naive,
        two_views=True,
        reads_embeddings=True,
        unread=("tau", "chunk_size", "checkpoint_chunks", "negatives", "num_negatives"),
    ),
}
