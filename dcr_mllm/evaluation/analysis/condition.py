"""Does the world denoiser respond to its condition, and to the form DCR gives it?

DCR adds one projected vector p to every one of the empty prompt's 77 context tokens. Softmax
is shift-invariant per query, so every cross-attention layer's weights are those of the empty
prompt, and the condition reaches the layer only as the additive vector W_out W_v p. A denoiser
trained on captions gives DCR a signal only if it also responds to such shifts. This measures,
on labelled world images, the denoising error (MSE to the scheduler's target) and how much the prediction moves:

- ``mse/caption``, ``mse/empty``, ``mse/shift``: with the image's detailed caption, with the empty
  prompt, and with the empty prompt shifted by the caption's mean context offset (the shift
  form's best guess of the caption, no training needed);
- ``mse_gain/<attribute>``: the error with the caption's ``attribute`` changed, minus the error
  with the right caption (positive: the denoiser uses that attribute); ``shift_gain/<attribute>``:
  the same in the shift form (what DCR's conditioning can pass on of that attribute);
- ``change/caption`` and ``change/shift``: relative change of the prediction when the condition
  is another image's (caption, or shift form).
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import numpy as np
import torch

from dcr_mllm.diffusion.denoiser import FrozenDenoiser
from dcr_mllm.evaluation.tower.encode import open_image
from dcr_mllm.world.scenes import (
    FINE_ATTRIBUTES,
    WORLD_VALUES,
    detailed_caption,
    read_world,
)

TIMESTEPS = (200, 500, 800)


@torch.inference_mode()
def condition_sensitivity(
    sd_dir: str | Path, data_dir: str | Path, count: int = 256, seed: int = 0, timesteps: tuple[int, ...] = TIMESTEPS
) -> dict[str, float]:
    """Each value is the mean over ``timesteps``."""
    from transformers import AutoTokenizer, CLIPTextModel

    denoiser = FrozenDenoiser.from_pretrained(sd_dir)
    tokenizer = AutoTokenizer.from_pretrained(sd_dir, subfolder="tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(sd_dir, subfolder="text_encoder").eval()

    def context(texts):
        ids = tokenizer(
            texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids
        return text_encoder(ids)[0]

    items = read_world(data_dir)[:count]
    scenes = [scene for _, scene in items]
    pixels = torch.stack([torch.from_numpy(np.array(open_image(p))).permute(2, 0, 1).float() / 255 for p, _ in items])
    generator = torch.Generator().manual_seed(seed)
    latents = denoiser.encode(pixels, generator)
    empty = denoiser.empty_context.expand(len(items), -1, -1)
    captions = context([detailed_caption(s) for s in scenes])
    shift = empty + (captions - empty).mean(dim=1, keepdim=True)
    other = torch.roll(torch.arange(len(items)), 1)
    rng = random.Random(seed)
    changed = {
        a: context(
            [
                detailed_caption(
                    dataclasses.replace(s, **{a: rng.choice([v for v in WORLD_VALUES[a] if v != getattr(s, a)])})
                )
                for s in scenes
            ]
        )
        for a in FINE_ATTRIBUTES
    }

    sums: dict[str, float] = {}
    for t in timesteps:
        noise = torch.randn(latents.shape, generator=generator)
        steps = torch.full((len(items),), t)
        noisy = denoiser.add_noise(latents, noise, steps)
        target = denoiser.target(latents, noise, steps)
        own, own_shift = denoiser.predict(noisy, steps, captions), denoiser.predict(noisy, steps, shift)
        values = {
            "mse/caption": _mse(own, target),
            "mse/empty": _mse(denoiser.predict(noisy, steps, empty), target),
            "mse/shift": _mse(own_shift, target),
            "change/caption": _change(own, denoiser.predict(noisy, steps, captions[other])),
            "change/shift": _change(own_shift, denoiser.predict(noisy, steps, shift[other])),
        }
        for attribute, ctx in changed.items():
            values[f"mse_gain/{attribute}"] = _mse(denoiser.predict(noisy, steps, ctx), target) - values["mse/caption"]
            ctx_shift = empty + (ctx - empty).mean(dim=1, keepdim=True)
            values[f"shift_gain/{attribute}"] = (
                _mse(denoiser.predict(noisy, steps, ctx_shift), target) - values["mse/shift"]
            )
        for key, value in values.items():
            sums[key] = sums.get(key, 0.0) + value / len(timesteps)
    return sums


def _mse(prediction, target) -> float:
    return (prediction - target).pow(2).mean().item()


def _change(a, b) -> float:
    """Mean relative distance between two batches of predictions."""
    return ((a - b).flatten(1).norm(dim=1) / a.flatten(1).norm(dim=1)).mean().item()
