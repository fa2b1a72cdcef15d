"""Control towers for calibrating a study: a tower known to see less than the base one.

``colour_blind`` is the negative control: the base tower with its patch embedding made blind to
hue, so every layer above it sees only the brightness R + G + B. Each input channel's filter is
replaced by a share of one common filter, scaled by that channel's normalisation std, so after the
image processor's normalisation the first layer computes the same function of R + G + B for every
channel: two images whose pixels have equal channel sums are the same image to the tower. The
world's six colours fall into three brightness groups (red, green, blue; yellow, purple; white),
so a colour question can be answered only up to its group: information removed, the rest of the
tower unchanged. The positive control, a tower that knows every attribute, is the world's
``clip_reference`` (``world.models``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from dcr_mllm.errors import DcrError
from dcr_mllm.io import atomic_dir
from dcr_mllm.towers import load_tower


def colour_blind(src: str | Path, dst: str | Path) -> Path:
    """Write ``src`` (an HF CLIP tower directory or preset) to ``dst`` with a hue-blind patch embedding.

    Args:
        src: the base tower.
        dst: the directory to write (replaced once the new one is complete).
    """
    tower = load_tower(src)
    conv = tower.vision.embeddings.patch_embedding if hasattr(tower.vision, "embeddings") else None
    if conv is None or conv.weight.shape[1] != 3:
        raise DcrError(f"{src}: only an HF tower with an RGB patch embedding can be made colour-blind")
    std = torch.tensor(tower.spec.std, dtype=conv.weight.dtype).view(1, 3, 1, 1)
    with torch.no_grad():
        # after normalisation x_c = (p_c - m_c) / s_c; filters w_c = s_c * a make sum_c w_c x_c = a (sum_c p_c) + const
        common = (conv.weight / std).mean(dim=1, keepdim=True)
        conv.weight.copy_(common * std)
    with atomic_dir(dst) as tmp:
        tower.save(tmp)
    return Path(dst)


__all__ = ["colour_blind"]
