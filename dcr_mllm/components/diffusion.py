"""Stable Diffusion's parts at tiny sizes, one builder each, for the tiny preset and the world.

Each builder constructs its module from the library's own class (random init: call it under the
caller's seed, in the caller's order); ``save_sd_pipeline`` writes them as a
``StableDiffusionPipeline`` directory, which real SD checkpoints share.
"""

from __future__ import annotations

from pathlib import Path

from dcr_mllm.components.tokenizers import CLIP_CONTEXT_LENGTH, CLIP_VOCAB_SIZE, clip_tokenizer, clip_tokenizer_files

#: SD 1.x/2.x's DDPM schedule (scheduler/scheduler_config.json of the real checkpoints)
SD_SCHEDULE = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "steps_offset": 1,
}
LATENT_CHANNELS = 4
#: the VAE downsamples twice (three encoder blocks): a 32x32 image maps to an 8x8x4 latent (real SD: four blocks, 512 -> 64)
LATENT_DOWNSAMPLE = 4


def sd_vae(image_size: int):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 32),
        layers_per_block=1,
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=8,
        sample_size=image_size,
        scaling_factor=0.18215,
    )


def sd_unet(image_size: int, channels: tuple[int, ...], cross_attention_dim: int):
    """One level per entry of ``channels``, cross-attention on all but the lowest.

    Args:
        image_size: side of the images in pixels; the UNet's latents are ``image_size // 4`` on a side.
        channels: output width of each level, highest resolution first.
        cross_attention_dim: width of the text encoder's hidden states the UNet attends to.
    """
    from diffusers import UNet2DConditionModel

    levels = len(channels)
    return UNet2DConditionModel(
        sample_size=image_size // LATENT_DOWNSAMPLE,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        block_out_channels=tuple(channels),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D",) * (levels - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (levels - 1),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
        norm_num_groups=8,
    )


def clip_text_encoder(width: int, intermediate: int, heads: int):
    """A two-layer CLIP text model; ``width`` is the UNet's cross-attention width, as in real SD.

    Args:
        width: hidden size of the text model.
        intermediate: hidden size of its MLP.
        heads: attention heads per layer (must divide ``width``).
    """
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=CLIP_VOCAB_SIZE,
            max_position_embeddings=CLIP_CONTEXT_LENGTH,
            hidden_size=width,
            intermediate_size=intermediate,
            num_hidden_layers=2,
            num_attention_heads=heads,
            hidden_act="gelu",
        )
    )


def sd_scheduler(prediction_type: str):
    from diffusers import DDPMScheduler

    return DDPMScheduler(**SD_SCHEDULE, prediction_type=prediction_type)


def save_sd_pipeline(out_dir: Path, vae, text_encoder, unet, scheduler, tokenizer=None) -> None:
    """The parts as a ``StableDiffusionPipeline`` directory (unet/, vae/, scheduler/, text_encoder/, tokenizer/).

    Args:
        out_dir: the pipeline directory to write (safetensors weights).
        vae: the autoencoder (``sd_vae``).
        text_encoder: the CLIP text model (``clip_text_encoder``).
        unet: the denoiser (``sd_unet``).
        scheduler: the noise scheduler (``sd_scheduler``).
        tokenizer: the text encoder's tokenizer; None: the real CLIP tokenizer (``clip_tokenizer``).
    """
    from diffusers import StableDiffusionPipeline

    StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer or clip_tokenizer(),
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    ).save_pretrained(out_dir, safe_serialization=True)
    clip_tokenizer_files(Path(out_dir) / "tokenizer")
