"""Diffusion Contrastive Reconstruction: the contrastive loss over denoiser predictions.

For image i, the anchor a_i is the denoiser's prediction for noisy latent i under image i's own
condition. Two positives pull it: p_i, the prediction under the augmented view of image i, and
g_i, the diffusion target. Negatives n_ik are the predictions for latent i under the other
images' conditions. All are flattened and L2-normalised, and with logits over the shared set
{a·p, a·g, a·n_ik} / tau the loss is

    L = mean_i  1/2 [ -log softmax(a·p) - log softmax(a·g) ]
      = mean_i  logsumexp_i - (a·p + a·g) / (2 tau)

computed with log-sum-exp in float32, so it stays finite where exp() overflows. ``dcr_loss``
takes the other B - 1 images of the batch as negatives; ``contrastive_loss`` takes any K per image
(objective.negatives: global, see dcr_mllm/objectives/negatives.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def contrastive_loss(anchor: Tensor, positive: Tensor, target: Tensor, negatives: Tensor, tau: float = 0.1) -> Tensor:
    """Scalar DCR loss for any set of negatives: the one formula both negative modes use.

    anchor, positive, target: [B, ...]; negatives[i, k]: the k-th negative prediction for latent i,
    shape [B, K, ...] (K may be 0).
    """
    batch = anchor.shape[0]
    if positive.shape[0] != batch or target.shape[0] != batch or negatives.shape[0] != batch:
        raise ValueError(
            f"contrastive_loss needs anchor, positive, target [B, ...] and negatives [B, K, ...]; got "
            f"{tuple(anchor.shape)}, {tuple(positive.shape)}, {tuple(target.shape)}, {tuple(negatives.shape)}"
        )
    anchor = F.normalize(anchor.float().flatten(1), dim=-1)  # [B, D]
    pos = F.normalize(positive.float().flatten(1), dim=-1)
    tgt = F.normalize(target.float().flatten(1), dim=-1)
    neg = F.normalize(negatives.float().flatten(2), dim=-1)  # [B, K, D]

    logit_pos = (anchor * pos).sum(-1) / tau  # [B]
    logit_tgt = (anchor * tgt).sum(-1) / tau  # [B]
    logit_neg = torch.einsum("id,ikd->ik", anchor, neg) / tau  # [B, K]

    logits = torch.cat([logit_pos[:, None], logit_tgt[:, None], logit_neg], dim=1)
    per_image = torch.logsumexp(logits, dim=1) - 0.5 * (logit_pos + logit_tgt)
    return per_image.mean()


def dcr_loss(pairwise: Tensor, positive: Tensor, target: Tensor, tau: float = 0.1) -> Tensor:
    """Scalar DCR loss with every other image of the batch as a negative.

    Args:
        pairwise: [B, B, ...]; ``pairwise[i, j]`` is the prediction for noisy latent i under image j's condition.
        positive: [B, ...]; ``positive[i]`` is the prediction for latent i under the augmented view of image i.
        target: [B, ...]; ``target[i]`` is the diffusion target for latent i.
        tau: the temperature dividing every similarity.
    """
    batch = pairwise.shape[0]
    if pairwise.shape[1] != batch or positive.shape[0] != batch or target.shape[0] != batch:
        raise ValueError(
            f"dcr_loss needs pairwise [B, B, ...], positive [B, ...], target [B, ...]; got "
            f"{tuple(pairwise.shape)}, {tuple(positive.shape)}, {tuple(target.shape)}"
        )
    anchor = torch.diagonal(pairwise, dim1=0, dim2=1).movedim(-1, 0)  # [B, ...]
    off_diagonal = ~torch.eye(batch, dtype=torch.bool, device=pairwise.device)
    negatives = pairwise[off_diagonal].view(batch, batch - 1, *pairwise.shape[2:])  # row i: every k != i
    return contrastive_loss(anchor, positive, target, negatives, tau)


def predict_pairs(
    predict,
    noisy: Tensor,
    timesteps: Tensor,
    contexts: Tensor,
    pairs: Tensor,
    chunk_size: int = 0,
    checkpoint: bool = True,
) -> Tensor:
    """Denoiser predictions for (latent i, context j) pairs, ``chunk_size`` pairs per call.

    pairs: [P, 2] long tensor of (latent index, context index). With chunk_size 0 every pair
    goes in one call. With chunking and activation checkpointing only each chunk's output is
    kept for backward, so peak memory no longer grows with B*B; results are the same.
    """
    chunk = chunk_size if chunk_size > 0 else len(pairs)
    outputs = []
    for start in range(0, len(pairs), chunk):
        part = pairs[start : start + chunk]
        if checkpoint and chunk_size > 0 and torch.is_grad_enabled():
            outputs.append(
                torch.utils.checkpoint.checkpoint(
                    _predict_part, predict, noisy, timesteps, contexts, part, use_reentrant=False
                )
            )
        else:
            outputs.append(_predict_part(predict, noisy, timesteps, contexts, part))
    return torch.cat(outputs)


def _predict_part(predict, noisy: Tensor, timesteps: Tensor, contexts: Tensor, part: Tensor) -> Tensor:
    latent, context = part[:, 0], part[:, 1]
    return predict(noisy[latent], timesteps[latent], contexts[context])


def dcr_pairs(batch: int, device: torch.device | None = None) -> Tensor:
    """All (i, j) pairs for the B x B grid, then (i, B + i) for the augmented views."""
    i, j = torch.meshgrid(torch.arange(batch), torch.arange(batch), indexing="ij")
    grid = torch.stack([i.flatten(), j.flatten()], dim=1)
    positives = torch.stack([torch.arange(batch), batch + torch.arange(batch)], dim=1)
    return torch.cat([grid, positives]).to(device)
