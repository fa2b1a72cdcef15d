"""The MMVP-VLM pair rule, shared by the benchmark and the synthetic fine-grained pairs probe.

A pair is two images and two statements. Each statement is scored as the official
``evaluate_vlm.py`` scores it: its image-text logits against the two images (the tower's own
logit scale and bias), a softmax over the two, and ``img1`` when image 1 gets more than 0.5
(a tie goes to ``img2``). A pair counts only when both statements pick their own image.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dcr_mllm.towers import VisionTower

PROMPT = "a photo of "  # the official prompt: prepended to every statement


def img1_probability(tower: VisionTower, text: Tensor, image1: Tensor, image2: Tensor) -> Tensor:
    """[P, D] unit vectors each -> [P]: softmax over (image 1, image 2) of each text's logits, at image 1.

    SigLIP's bias is added like the model adds it, although it cancels in a softmax over two.
    """
    cosines = torch.stack([(text * image1).sum(-1), (text * image2).sum(-1)], dim=-1)
    logits = cosines * tower.logit_scale() + tower.logit_bias()
    return logits.softmax(dim=-1)[:, 0]


def prediction(img1_score: float) -> str:
    return "img1" if img1_score > 0.5 else "img2"


def judge_pairs(
    tower: VisionTower, image1: Tensor, image2: Tensor, text1: Tensor, text2: Tensor
) -> list[tuple[str, str, float, float]]:
    """For each pair: ``(pred1, pred2, img1_score1, img1_score2)``, statement k scored against both images."""
    scores1 = img1_probability(tower, text1, image1, image2).tolist()
    scores2 = img1_probability(tower, text2, image1, image2).tolist()
    return [(prediction(s1), prediction(s2), s1, s2) for s1, s2 in zip(scores1, scores2)]


def percent(correct: int, total: int) -> float:
    return 100.0 * correct / total
