"""DCR negatives drawn from the global batch: conditions gathered across ranks, K sampled per anchor.

A DCR negative is the denoiser's prediction for latent i under another image's condition, and a
condition is one small vector per image (the projector's output before it is broadcast over the
context tokens). Gathering every rank's vectors with autograd (as open_clip's
``gather_with_grad``) costs little; only the UNet calls cost. Each anchor is paired with K
negatives drawn without replacement from the other images of the global batch, so a rank runs
the UNet B x (K + 2) times — one anchor, one positive and K negatives per image — whatever the
number of ranks, instead of B x (B + 1) with negatives from its own B images only.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed.nn.functional import all_gather

from dcr_mllm.errors import ConfigError


def gather_with_grad(local: Tensor) -> tuple[Tensor, int]:
    """Every rank's rows in rank order, and the offset of this rank's rows. Backward sums, for each
    rank's rows, the gradients of every rank's loss and hands them to the rank that made them, so
    averaging the ranks' parameter gradients (DeepSpeed, DDP) gives the gradient of the mean loss.
    Ranks must hold the same number of rows."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return local, 0
    return torch.cat(all_gather(local)), dist.get_rank() * local.shape[0]


def check_negative_count(k: int, total: int) -> None:
    """Refuse K negatives from a global batch of ``total`` images that has fewer others than K."""
    if not 0 <= k <= total - 1:
        raise ConfigError(
            f"objective.num_negatives={k} cannot be drawn from the {total - 1} other images of the global "
            f"batch; set it to at most {total - 1}, or to 0 for the micro batch size minus one"
        )


def sample_negatives(batch: int, total: int, offset: int, k: int, generator: torch.Generator | None) -> Tensor:
    """[batch, k] indices into the global batch: for anchor i (global index offset + i), k distinct
    other images, a uniform draw without replacement (the first k of a random order of the others)."""
    check_negative_count(k, total)
    scores = torch.rand(batch, total, generator=generator)
    scores[torch.arange(batch), offset + torch.arange(batch)] = 2.0  # self sorts after every other image
    return scores.argsort(dim=1)[:, :k]


def sampled_pairs(batch: int, total: int, offset: int, negatives: Tensor) -> Tensor:
    """(latent, condition) pairs for ``predict_pairs``: anchors, then positives, then each latent's
    K negatives in a row ([B * K] pairs, latent-major, so they view as [B, K]).

    Condition indices point into a table of the ``total`` gathered base-view conditions followed
    by this rank's ``batch`` augmented-view conditions.
    """
    local = torch.arange(batch)
    anchors = torch.stack([local, offset + local], dim=1)
    positives = torch.stack([local, total + local], dim=1)
    k = negatives.shape[1]
    negative_pairs = torch.stack([local.repeat_interleave(k), negatives.flatten()], dim=1)
    return torch.cat([anchors, positives, negative_pairs])
