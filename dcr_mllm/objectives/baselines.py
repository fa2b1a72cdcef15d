"""Ablation objectives that run through the same recipe as DCR.

``reconstruction``: the plain denoising loss conditioned on the tower (the DIVA/GenHancer
baseline). ``naive``: that, plus an InfoNCE between the tower embeddings of the two views — the
obvious way to add a contrastive signal, which DCR replaces by contrasting in prediction space.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def reconstruction_loss(prediction: Tensor, target: Tensor) -> Tensor:
    return F.mse_loss(prediction.float(), target.float())


def info_nce(embeddings: Tensor, positives: Tensor, tau: float = 0.07) -> Tensor:
    """Symmetric InfoNCE: embeddings[i] and positives[i] are a pair; other rows are negatives."""
    a = F.normalize(embeddings.float(), dim=-1)
    b = F.normalize(positives.float(), dim=-1)
    logits = a @ b.T / tau
    labels = torch.arange(len(a), device=a.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))
