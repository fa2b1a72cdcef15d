"""One training step's forward pass for stage one: images in, objective out.

``EnhanceModel`` holds the tower, the projector and the frozen denoiser, and is what the
training engine wraps (DeepSpeed needs one module whose forward returns the loss). Which of
its parameters train is decided by the stage recipe, not here: the forward runs the tower
without autograd when nothing in it trains, which is the projector stage's saving.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from dcr_mllm.diffusion.denoiser import FrozenDenoiser, TargetKind, resize_for
from dcr_mllm.diffusion.projector import ConditionProjector
from dcr_mllm.objectives.augment import AugmentConfig, positive_view
from dcr_mllm.objectives.baselines import info_nce, reconstruction_loss
from dcr_mllm.objectives.dcr import dcr_loss, dcr_pairs, predict_pairs
from dcr_mllm.towers.base import VisionTower


@dataclass
class ObjectiveConfig:
    name: Literal["dcr", "reconstruction", "naive"] = "dcr"
    tau: float = 0.1
    #: diffusion target: follow the scheduler (auto) or force one; "velocity" is upstream's choice
    target: TargetKind = "auto"
    #: denoiser calls per chunk for the B*B+B DCR predictions; 0 = one unchunked batch
    chunk_size: int = 0
    checkpoint_chunks: bool = True
    naive_weight: float = 1.0
    naive_tau: float = 0.07
    #: resolution fed to the VAE; 0 = the tower's resolution
    vae_image_size: int = 0
    augment: AugmentConfig = field(default_factory=AugmentConfig)


class EnhanceModel(nn.Module):
    def __init__(self, tower: VisionTower, projector: ConditionProjector, denoiser: FrozenDenoiser, config: ObjectiveConfig):
        super().__init__()
        self.tower, self.projector, self.denoiser, self.config = tower, projector, denoiser, config

    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, float]]:
        """images: [B, 3, H, W] in [0, 1]. Returns the loss and scalars to log."""
        cfg = self.config
        batch = images.shape[0]
        views = [self.tower.normalize(images)]
        if cfg.name in ("dcr", "naive"):
            views.append(positive_view(images, self.tower.normalize, cfg.augment, generator))
        tower_trains = any(p.requires_grad for p in self.tower.parameters())
        with torch.set_grad_enabled(tower_trains and torch.is_grad_enabled()):
            embeddings = self.tower.global_embedding(torch.cat(views))  # one tower call for both views
        contexts = self.projector(embeddings.float(), self.denoiser.empty_context)

        vae_size = cfg.vae_image_size or self.tower.spec.image_size
        latents = self.denoiser.encode(resize_for(images, vae_size), generator).float()
        noise = torch.randn(latents.shape, generator=generator).to(latents)
        timesteps = torch.randint(0, self.denoiser.num_timesteps, (batch,), generator=generator).to(latents.device)
        noisy = self.denoiser.add_noise(latents, noise, timesteps)
        target = self.denoiser.target(latents, noise, timesteps, cfg.target)

        if cfg.name == "dcr":
            pairs = dcr_pairs(batch, device=latents.device)
            preds = predict_pairs(self.denoiser.predict, noisy, timesteps, contexts, pairs, cfg.chunk_size, cfg.checkpoint_chunks)
            pairwise = preds[: batch * batch].view(batch, batch, *preds.shape[1:])
            loss = dcr_loss(pairwise, preds[batch * batch:], target, cfg.tau)
            return loss, {"loss": loss.item()}
        prediction = self.denoiser.predict(noisy, timesteps, contexts[:batch])
        recon = reconstruction_loss(prediction, target)
        if cfg.name == "reconstruction":
            return recon, {"loss": recon.item()}
        contrast = info_nce(embeddings[:batch], embeddings[batch:], cfg.naive_tau)
        loss = recon + cfg.naive_weight * contrast
        return loss, {"loss": loss.item(), "reconstruction": recon.item(), "contrastive": contrast.item()}
