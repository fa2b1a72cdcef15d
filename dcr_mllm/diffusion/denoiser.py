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
from dcr_mllm.weights import check_model_dir

TargetKind = Literal["auto", "epsilon", "v_prediction", "sample", "velocity"]
SUBFOLDERS = ("unet", "vae", "scheduler", "text_encoder", "tokenizer")


def check_sd_dir(path: str | Path) -> Path:
    """A diffusers Stable Diffusion directory with every part DCR needs, or a one-line error."""
    path = Path(path)
    if not path.is_dir():
        raise DcrError(
            f"denoiser directory {path} does not exist; point denoiser.path at a local Stable Diffusion (diffusers layout) directory"
        )
    missing = [s for s in SUBFOLDERS if not (path / s).is_dir()]
    if missing:
        lacking = ", ".join(m + "/" for m in missing)
        raise DcrError(
            f"denoiser directory {path} lacks {lacking}; it must have the diffusers Stable Diffusion layout ({', '.join(SUBFOLDERS)})"
        )
    return check_model_dir(path)


def unet_cross_attention_dim(path: str | Path) -> int:
    """Read the UNet's conditioning width from its config, without building the model."""
    config = json.loads((check_sd_dir(path) / "unet" / "config.json").read_text())
    width = config["cross_attention_dim"]
    return width[0] if isinstance(width, (list, tuple)) else int(width)


def context_length(path: str | Path) -> int:
    """The number of context tokens the UNet is conditioned on (the tokenizer's padded length, as
    ``FrozenDenoiser`` encodes the empty prompt), from config files."""
    path = check_sd_dir(path)
    tokenizer_config = path / "tokenizer" / "tokenizer_config.json"
    length = json.loads(tokenizer_config.read_text()).get("model_max_length") if tokenizer_config.is_file() else None
    if not isinstance(length, int) or length > 100_000:  # transformers writes a huge number when unset
        length = json.loads((path / "text_encoder" / "config.json").read_text())["max_position_embeddings"]
    return int(length)


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
    def from_pretrained(
        cls,
        path: str | Path,
        dtype: torch.dtype = torch.float32,
        empty_prompt_mask: bool = False,
        ds_config: dict | None = None,
    ) -> FrozenDenoiser:
        """``empty_prompt_mask`` runs the text encoder with the tokenizer's padding mask, as upstream DCR
        does (boyuh/DCR clip_models/CLIP_bank.py:45-51); without it (the default) the context is the
        one diffusers' SD pipelines, and so the UNet's training, use: every padding token attended."""
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import AutoTokenizer, CLIPTextModel

        path = check_sd_dir(path)
        if ds_config is None:
            unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", torch_dtype=dtype)
            vae = AutoencoderKL.from_pretrained(path, subfolder="vae", torch_dtype=dtype)
        else:  # ZeRO-3 (the engine's config): UNet and VAE built partitioned; every rank calls this together
            from dcr_mllm.training.zero import config_dtype

            dtype = config_dtype(ds_config)
            unet = _partitioned(UNet2DConditionModel, path / "unet", dtype, ds_config)
            vae = _partitioned(AutoencoderKL, path / "vae", dtype, ds_config)
        scheduler = DDPMScheduler.from_pretrained(path, subfolder="scheduler")
        tokenizer = AutoTokenizer.from_pretrained(path, subfolder="tokenizer")
        text_encoder = CLIPTextModel.from_pretrained(path, subfolder="text_encoder")
        tokens = tokenizer(
            [""], padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
        )
        with torch.no_grad():
            empty = text_encoder(tokens.input_ids, attention_mask=tokens.attention_mask if empty_prompt_mask else None)[
                0
            ].to(dtype)
        return cls(unet, vae, scheduler, empty)

    def train(self, mode: bool = True) -> FrozenDenoiser:
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
        noise = torch.randn(posterior.mean.shape, generator=generator, dtype=posterior.mean.dtype).to(
            posterior.mean.device
        )
        latents = posterior.mean + posterior.std * noise
        return latents * self.vae.config.scaling_factor

    def add_noise(self, latents: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
        shape = (-1,) + (1,) * (latents.dim() - 1)
        return (
            self.sqrt_alpha[timesteps].view(shape) * latents + self.sqrt_one_minus_alpha[timesteps].view(shape) * noise
        )

    def target(self, latents: Tensor, noise: Tensor, timesteps: Tensor, kind: TargetKind = "auto") -> Tensor:
        """What the UNet should predict. ``auto`` follows the scheduler; ``velocity`` is upstream's choice."""
        kind = self.prediction_type if kind == "auto" else kind
        if kind == "epsilon":
            return noise
        if kind == "sample":
            return latents
        if kind in ("v_prediction", "velocity"):
            shape = (-1,) + (1,) * (latents.dim() - 1)
            return (
                self.sqrt_alpha[timesteps].view(shape) * noise
                - self.sqrt_one_minus_alpha[timesteps].view(shape) * latents
            )
        raise DcrError(f"unknown diffusion target {kind!r}; use auto, epsilon, v_prediction, sample or velocity")

    def predict(self, noisy: Tensor, timesteps: Tensor, context: Tensor) -> Tensor:
        dtype = next(self.unet.parameters()).dtype
        return self.unet(noisy.to(dtype), timesteps, encoder_hidden_states=context.to(dtype)).sample


def _partitioned(model_class, directory: Path, dtype: torch.dtype, ds_config: dict) -> nn.Module:
    """A diffusers model built under ZeRO-3, partitioned as it is created, its safetensors weights
    streamed in one module at a time: no rank holds it whole."""
    import contextlib

    from safetensors import safe_open

    from dcr_mllm.training.zero import empty_init, load_streamed

    with empty_init(dtype, ds_config):
        model = model_class.from_config(model_class.load_config(directory))
    names = {name for name, _ in model.named_parameters()}
    with contextlib.ExitStack() as stack:
        files = [
            stack.enter_context(safe_open(str(f), framework="pt")) for f in sorted(directory.glob("*.safetensors"))
        ]
        where = {key: f for f in files for key in f.keys()}
        missing = sorted(names - where.keys())
        if missing:
            raise DcrError(
                f"{directory} lacks {missing[0]} (and {len(missing) - 1} more) in safetensors; ZeRO-3 loading needs "
                "the current diffusers layout: load and save_pretrained it once"
            )
        load_streamed(model, lambda name: where[name].get_tensor(name), names)
    return model


def resize_for(images: Tensor, size: int) -> Tensor:
    """Bicubic resize of [B, 3, H, W] pixels in [0, 1] to size x size (no-op when equal)."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
