"""The augmented positive view, computed for a whole batch at once on the batch's device.

Same family of transforms as upstream — random resized crop (scale 0.9-1.0, ratio 0.9-1.1),
horizontal flip, colour jitter (brightness/contrast/saturation 0.1, hue 0.05) — applied in pixel
space [0, 1] *before* the tower's normalisation. There is no vertical flip by default:
orientation is one of the fine-grained abilities DCR is meant to improve, so a flipped view
must not count as "the same image". ``mode="upstream"`` reproduces upstream: vertical flip
included, and the jitter applied after normalisation, clamped to [0, 1] as ColorJitter does.

Every random draw comes from the caller's generator, so a run is repeatable per rank.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

# RGB <-> YIQ: hue is a rotation of the (I, Q) chroma plane
_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_TO_RGB = torch.linalg.inv(_RGB_TO_YIQ)


@dataclass
class AugmentConfig:
    mode: Literal["pixel", "upstream", "none"] = "pixel"
    crop_scale: tuple[float, float] = (0.9, 1.0)
    crop_ratio: tuple[float, float] = (0.9, 1.1)
    hflip: float = 0.5
    brightness: float = 0.1
    contrast: float = 0.1
    saturation: float = 0.1
    hue: float = 0.05


def _uniform(n: int, low: float, high: float, generator: torch.Generator | None) -> Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def random_resized_crop_flip(images: Tensor, cfg: AugmentConfig, vflip: float, generator: torch.Generator | None) -> Tensor:
    """Crop a random box of the given scale/aspect ratio, resize back, maybe flip: one grid_sample."""
    n = images.shape[0]
    area = _uniform(n, *cfg.crop_scale, generator)
    log_ratio = _uniform(n, math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1]), generator)
    ratio = log_ratio.exp()
    width = (area * ratio).sqrt().clamp(max=1.0)  # fraction of the image width
    height = (area / ratio).sqrt().clamp(max=1.0)
    center_x = (1 - width) * (2 * torch.rand(n, generator=generator) - 1)  # in [-(1-w), 1-w]
    center_y = (1 - height) * (2 * torch.rand(n, generator=generator) - 1)
    flip_x = torch.where(torch.rand(n, generator=generator) < cfg.hflip, -1.0, 1.0)
    flip_y = torch.where(torch.rand(n, generator=generator) < vflip, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = width * flip_x
    theta[:, 0, 2] = center_x
    theta[:, 1, 1] = height * flip_y
    theta[:, 1, 2] = center_y
    theta = theta.to(device=images.device, dtype=images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def color_jitter(images: Tensor, cfg: AugmentConfig, generator: torch.Generator | None) -> Tensor:
    """Per-image brightness, contrast, saturation and hue factors, then clamp to [0, 1]."""
    n = images.shape[0]
    shape = (n, 1, 1, 1)

    def factor(strength: float) -> Tensor:
        return _uniform(n, 1 - strength, 1 + strength, generator).view(shape).to(images)

    brightness, contrast, saturation = factor(cfg.brightness), factor(cfg.contrast), factor(cfg.saturation)
    hue = _uniform(n, -cfg.hue, cfg.hue, generator).to(images) * 2 * math.pi
    x = (images * brightness).clamp(0, 1)
    gray = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
    x = (gray.mean(dim=(2, 3), keepdim=True) + contrast * (x - gray.mean(dim=(2, 3), keepdim=True))).clamp(0, 1)
    gray = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
    x = (gray + saturation * (x - gray)).clamp(0, 1)
    yiq = torch.einsum("ij,njhw->nihw", _RGB_TO_YIQ.to(x), x)
    cos, sin = hue.cos().view(n, 1, 1), hue.sin().view(n, 1, 1)
    i, q = yiq[:, 1], yiq[:, 2]
    yiq = torch.stack([yiq[:, 0], cos * i - sin * q, sin * i + cos * q], dim=1)
    return torch.einsum("ij,njhw->nihw", _YIQ_TO_RGB.to(x), yiq).clamp(0, 1)


def positive_view(images: Tensor, normalize, cfg: AugmentConfig, generator: torch.Generator | None) -> Tensor:
    """Augmented view of [B, 3, H, W] pixels in [0, 1], returned *normalised* for the tower."""
    if cfg.mode == "none":
        return normalize(images)
    if cfg.mode == "pixel":
        return normalize(color_jitter(random_resized_crop_flip(images, cfg, 0.0, generator), cfg, generator))
    # upstream: normalise first, then crop/flips (vertical included) and a jitter that clamps
    normalized = normalize(images)
    return color_jitter(random_resized_crop_flip(normalized, cfg, 0.5, generator), cfg, generator)
