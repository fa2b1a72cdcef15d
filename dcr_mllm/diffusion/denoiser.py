"""The frozen latent-diffusion model that DCR reconstructs through.

Loads the UNet, VAE and noise scheduler from a local Stable Diffusion 1.x/2.x directory (the
diffusers layout: unet/, vae/, scheduler/, text_encoder/, tokenizer/). The text encoder is only
needed for one constant, the embedding of the empty prompt, so it is run once at load time and
dropped: it never reaches the optimizer or the GPU.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dcr_mllm.errors import DcrError

TargetKind = Literal["auto", "epsilon", "v_prediction", "sample", "velocity"]
SUBFOLDERS = ("unet", "vae", "scheduler", "text_encoder", "tokenizer")


def check_sd_dir(path: str | Path) -> Path:
    """A diffusers Stable Diffusion directory with every part DCR needs, or a one-line error."""
    path = Path(path)
    if not path.is_dir():
        raise DcrError(f"denoiser directory {path} does not exist; point denoiser.path at a local Stable Diffusion (diffusers layout) directory")
    missing = [s for s in SUBFOLDERS if not (path / s).is_dir()]
    if missing:
        lacking = ", ".join(m + "/" for m in missing)
        raise DcrError(f"denoiser directory {path} lacks {lacking}; it must have the diffusers Stable Diffusion layout ({', '.join(SUBFOLDERS)})")
    return path


def unet_cross_attention_dim(path: str | Path) -> int:
    """Read the UNet's conditioning width from its config, without building the model."""
    config = json.loads((check_sd_dir(path) / "unet" / "config.json").read_text())
    width = config["cross_attention_dim"]
    return width[0] if isinstance(width, (list, tuple)) else int(width)


class FrozenDenoiser(nn.Module):
    """UNet + VAE + scheduler, frozen, with the empty-prompt context cached as a buffer."""

    def __init__(self, unet: nn.Module, vae: nn.Module, scheduler, empty_context: Tensor):
        super().__init__()
        self.unet, self.vae, self.scheduler = unet, vae, scheduler
        self.register_buffer("empty_context", empty_context, persistent=False)  # [1, L, cross]
        self.requires_grad_(False)
        self.eval()
        alphas = scheduler.alphas_cumprod.float()
        self.register_buffer("sqrt_alpha", alphas.sqrt(), persistent=False)
        self.register_buffer("sqrt_one_minus_alpha", (1 - alphas).sqrt(), persistent=False)

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: torch.dtype = torch.float32) -> "FrozenDenoiser":
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import AutoTokenizer, CLIPTextModel

        path = check_sd_dir(path)
        unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", torch_dtype=dtype)
        vae = AutoencoderKL.from_pretrained(path, subfolder="vae", torch_dtype=dtype)
        scheduler = DDPMScheduler.from_pretrained(path, subfolder="scheduler")
        tokenizer = AutoTokenizer.from_pretrained(path, subfolder="tokenizer")
        text_encoder = CLIPTextModel.from_pretrained(path, subfolder="text_encoder")
        ids = tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids
        with torch.no_grad():
            empty = text_encoder(ids)[0].to(dtype)
        return cls(unet, vae, scheduler, empty)

    def train(self, mode: bool = True) -> "FrozenDenoiser":
        return super().train(False)  # always eval: frozen, and no dropout in the reconstruction

    @property
    def cross_attention_dim(self) -> int:
        return self.empty_context.shape[-1]

    @property
    def prediction_type(self) -> str:
        return self.scheduler.config.prediction_type

    @property
    def num_timesteps(self) -> int:
        return self.scheduler.config.num_train_timesteps

    @torch.no_grad()
    def encode(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Pixels in [0, 1] -> scaled latents (a sample of the VAE posterior, as in SD training)."""
        dtype = next(self.vae.parameters()).dtype
        posterior = self.vae.encode((images * 2 - 1).to(dtype)).latent_dist
        noise = torch.randn(posterior.mean.shape, generator=generator, dtype=posterior.mean.dtype).to(posterior.mean.device)
        latents = posterior.mean + posterior.std * noise
        return latents * self.vae.config.scaling_factor

    def add_noise(self, latents: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        shape = (-1,) + (1,) * (latents.dim() - 1)
        return self.sqrt_alpha[timesteps].view(shape) * latents + self.sqrt_one_minus_alpha[timesteps].view(shape) * noise

    def target(self, latents: Tensor, noise: Tensor, timesteps: Tensor, kind: TargetKind = "auto") -> Tensor:
        """What the UNet should predict. ``auto`` follows the scheduler; ``velocity`` is upstream's choice."""
        kind = self.prediction_type if kind == "auto" else kind
        if kind == "epsilon":
            return noise
        if kind == "sample":
            return latents
        if kind in ("v_prediction", "velocity"):
            shape = (-1,) + (1,) * (latents.dim() - 1)
            return self.sqrt_alpha[timesteps].view(shape) * noise - self.sqrt_one_minus_alpha[timesteps].view(shape) * latents
        raise DcrError(f"unknown diffusion target {kind!r}; use auto, epsilon, v_prediction, sample or velocity")

    def predict(self, noisy: Tensor, timesteps: Tensor, context: Tensor) -> Tensor:
        dtype = next(self.unet.parameters()).dtype
        return self.unet(noisy.to(dtype), timesteps, encoder_hidden_states=context.to(dtype)).sample


def resize_for(images: Tensor, size: int) -> Tensor:
    """Bicubic resize of [B, 3, H, W] pixels in [0, 1] to size x size (no-op when equal)."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
