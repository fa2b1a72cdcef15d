"""The augmented positive view of each image, on the batch's device.

``mode="pixel"`` (the default) uses upstream's kinds and strengths — random resized crop (scale
0.9-1.0, ratio 0.9-1.1), horizontal flip, colour jitter (brightness/contrast/saturation 0.1, hue
0.05) — but applies them to pixels in [0, 1] *before* the tower's normalisation, for the whole
batch at once: crop and flip in one ``grid_sample``, then the jitter in a fixed order with hue as a
rotation in YIQ. There is no vertical flip: orientation is one of the fine-grained abilities DCR
is meant to improve, so a flipped view must not count as "the same image".

``mode="upstream"`` is upstream's transform exactly (boyuh/DCR clip_models/CLIP_bank.py:33-42,
applied per image at :62-65): torchvision's ColorJitter (the four adjustments in a random order
per image, hue in HSV), RandomHorizontalFlip, RandomVerticalFlip(0.5) and RandomResizedCrop
(bilinear, antialiased), run on the *normalised* image, so the jitter's clamp to [0, 1] cuts off
every negative normalised value. It calls torchvision's own functions and makes torchvision's
random draws in torchvision's order.

Every random draw comes from the caller's generator, so a run is repeatable per rank.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from dcr_mllm.data.images import random_resized_crop_params

# RGB <-> YIQ: hue is a rotation of the (I, Q) chroma plane
_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_TO_RGB = torch.linalg.inv(_RGB_TO_YIQ)
UPSTREAM_VFLIP = 0.5  # boyuh/DCR clip_models/CLIP_bank.py:36


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


def random_resized_crop_flip(
    images: Tensor, cfg: AugmentConfig, vflip: float, generator: torch.Generator | None
) -> Tensor:
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


def upstream_view(image: Tensor, cfg: AugmentConfig, generator: torch.Generator | None) -> Tensor:
    """Upstream's Compose on one [3, H, W] tensor, drawing what each torchvision transform draws."""
    from torchvision.transforms import functional as TF

    # ColorJitter.get_params: an order of the four adjustments, then each factor (none when off)
    order = torch.randperm(4, generator=generator).tolist()
    ranges = [(max(0.0, 1 - s), 1 + s) if s else None for s in (cfg.brightness, cfg.contrast, cfg.saturation)]
    ranges.append((-cfg.hue, cfg.hue) if cfg.hue else None)
    factors = [None if r is None else torch.empty(1).uniform_(*r, generator=generator).item() for r in ranges]
    adjust = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    for k in order:
        if factors[k] is not None:
            image = adjust[k](image, factors[k])
    if torch.rand(1, generator=generator).item() < cfg.hflip:
        image = TF.hflip(image)
    if torch.rand(1, generator=generator).item() < UPSTREAM_VFLIP:
        image = TF.vflip(image)
    height, width = image.shape[-2:]
    i, j, h, w = random_resized_crop_params(height, width, cfg.crop_scale, cfg.crop_ratio, generator)
    return TF.resized_crop(image, i, j, h, w, [height, width], antialias=True)


def positive_view(images: Tensor, normalize, cfg: AugmentConfig, generator: torch.Generator | None) -> Tensor:
    """Augmented view of [B, 3, H, W] pixels in [0, 1], returned *normalised* for the tower."""
    if cfg.mode == "none":
        return normalize(images)
    if cfg.mode == "pixel":
        return normalize(color_jitter(random_resized_crop_flip(images, cfg, 0.0, generator), cfg, generator))
    return torch.stack([upstream_view(image, cfg, generator) for image in normalize(images)])
