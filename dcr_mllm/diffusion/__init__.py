"""The frozen Stable Diffusion denoiser and the projector that conditions it on a tower."""

from dcr_mllm.diffusion.denoiser import (
    FrozenDenoiser,
    check_sd_dir,
    unet_cross_attention_dim,
)
from dcr_mllm.diffusion.projector import ConditionProjector, check_widths

__all__ = ["ConditionProjector", "FrozenDenoiser", "check_sd_dir", "check_widths", "unet_cross_attention_dim"]
