"""One training step's forward pass for stage one: images in, objective out.

``EnhanceModel`` holds the tower, the projector and the frozen denoiser, and is what the
training engine wraps (DeepSpeed needs one module whose forward returns the loss). Which of
its parameters train is decided by the stage recipe, not here: the forward runs the tower
without autograd when nothing in it trains, which is the projector stage's saving.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dcr_mllm.diffusion.denoiser import FrozenDenoiser, resize_for
from dcr_mllm.diffusion.projector import ConditionProjector
from dcr_mllm.objectives.augment import positive_view
from dcr_mllm.objectives.baselines import info_nce, reconstruction_loss
from dcr_mllm.objectives.dcr import contrastive_loss, dcr_loss, dcr_pairs, predict_pairs
from dcr_mllm.objectives.negatives import (
    gather_with_grad,
    sample_negatives,
    sampled_pairs,
)
from dcr_mllm.objectives.settings import (
    DcrSettings,
    NaiveSettings,
    ObjectiveConfig,
    ObjectiveSettings,
    ReconstructionSettings,
)
from dcr_mllm.towers.base import VisionTower


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
    """A stage-one objective: its loss, what its forward needs, and its settings' dataclass."""

    loss: Callable[[EnhanceModel, StepInputs], tuple[Tensor, dict[str, float]]]
    two_views: bool  # an augmented view of every image beside the base view
    reads_embeddings: bool  # the global embeddings, whatever the condition form
    settings: type[ObjectiveSettings]  # what ``objective:`` holds for it (``settings.py``)


#: objective name (``objective.name``) -> the objective
OBJECTIVES: dict[str, Objective] = {
    "dcr": Objective(_dcr, two_views=True, reads_embeddings=False, settings=DcrSettings),
    "reconstruction": Objective(
        _reconstruction, two_views=False, reads_embeddings=False, settings=ReconstructionSettings
    ),
    "naive": Objective(_naive, two_views=True, reads_embeddings=True, settings=NaiveSettings),
}
