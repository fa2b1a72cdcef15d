"""Embeddings for evaluation: every image and every text encoded once, in batches, L2-normalised.

Images go through the tower's own processor (``VisionTower.preprocess``), or a benchmark's own
per-image transform where it has one, and texts through the tower's own tokenizer
(``VisionTower.encode_text``), so a benchmark sees the tower as its family (or its script) would.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from tqdm.auto import tqdm

from dcr_mllm.errors import DcrError
from dcr_mllm.towers import VisionTower


def open_image(path: str | Path, convert_rgb: bool = True) -> Image.Image:
    """Decode an image, to RGB unless ``convert_rgb`` is false (a transform that converts later, as
    the ``clip`` package's does), as benchmark scripts do (no EXIF rotation); unreadable -> DcrError naming it."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB") if convert_rgb else image.copy()
    except Exception as err:  # PIL reports bad data with many exception types
        raise DcrError(f"cannot read image {path}: {err}; re-download it or remove it from the benchmark") from err


@torch.inference_mode()
def image_embeddings(
    tower: VisionTower,
    images: Sequence[str | Path | Image.Image],
    batch_size: int,
    desc: str = "images",
    transform: Callable[[Image.Image], Tensor] | None = None,
) -> Tensor:
    """[N] image paths or PIL images -> [N, global_dim] unit vectors (float32, CPU); files are opened batch by batch.

    ``transform``: PIL image as decoded -> [3, S, S] pixels, in place of the tower's processor.
    """
    device = tower.mean.device
    out = []
    for start in tqdm(range(0, len(images), batch_size), desc=desc, disable=None, leave=False):
        batch = [
            item if isinstance(item, Image.Image) else open_image(item, convert_rgb=transform is None)
            for item in images[start : start + batch_size]
        ]
        pixels = tower.preprocess(batch) if transform is None else torch.stack([transform(image) for image in batch])
        out.append(tower.global_embedding(pixels.to(device)).float().cpu())
    return F.normalize(torch.cat(out), dim=-1)


@torch.inference_mode()
def text_embeddings(tower: VisionTower, texts: Sequence[str], batch_size: int) -> Tensor:
    """[T] strings -> [T, global_dim] unit vectors (float32, CPU)."""
    out = [
        tower.encode_text(list(texts[start : start + batch_size])).float().cpu()
        for start in range(0, len(texts), batch_size)
    ]
    return F.normalize(torch.cat(out), dim=-1)
