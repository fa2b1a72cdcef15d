"""Probes of the two abilities the DCR paper names, on data a user has locally.

- **D-Ability** (discrimination: are classes separable?) -- ``evaluate_classification`` on an
  image folder (``DIR/<class>/*``): zero-shot top-1 with the prompts ``"a photo of a {class}."``
  (underscores in folder names read as spaces), and a linear probe (logistic regression on the
  L2-normalised global embeddings) top-1. Both are measured on the same test images: ``DIR/test``
  when ``DIR/train`` and ``DIR/test`` exist, else a fixed fifth of each class (at least one image,
  chosen by a hash of its path, so the split never depends on file order or on the machine).
- **P-Ability** (perception of fine detail) -- MMVP-VLM (``mmvp_vlm``), plus
  ``evaluate_fine_grained``: synthetic scene pairs that differ in one attribute
  (``synthetic.fine_grained_pairs``), judged by the MMVP-VLM pair rule, reported per attribute.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from dcr_mllm.data.images import FOLDER_IMAGE_EXTENSIONS
from dcr_mllm.data.synthetic import caption
from dcr_mllm.errors import DcrError
from dcr_mllm.evaluation.tower.encode import image_embeddings, text_embeddings
from dcr_mllm.evaluation.tower.pairs import PROMPT, judge_pairs, percent
from dcr_mllm.evaluation.tower.report import BenchmarkResult
from dcr_mllm.towers import VisionTower

TEST_FRACTION = 0.2  # of each class, when the folder has no train/test split of its own


class ClassificationData:
    """An image folder's classes and its train and test images, as (path, label) lists."""

    def __init__(self, root: str | Path):
        root = Path(root)
        if not root.is_dir():
            raise DcrError(f"image folder {root} does not exist: check --data")
        if (root / "train").is_dir() and (root / "test").is_dir():
            self.classes, self.train = _class_images(root / "train")
            test_classes, test = _class_images(root / "test")
            unknown = sorted(set(test_classes) - set(self.classes))
            if unknown:
                raise DcrError(
                    f"{root}/test has classes that {root}/train lacks ({', '.join(unknown)}): give both splits the same class folders"
                )
            index = {name: label for label, name in enumerate(self.classes)}
            self.test = [(path, index[test_classes[label]]) for path, label in test]
        else:
            self.classes, images = _class_images(root)
            self.train, self.test = _hash_split(root, images, len(self.classes))


def _class_images(root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if len(classes) < 2:
        raise DcrError(
            f"{root} has {len(classes)} class folders: an image folder needs one subfolder per class, at least two"
        )
    images = []
    for label, name in enumerate(classes):
        found = sorted(
            p for p in (root / name).rglob("*") if p.suffix.lower() in FOLDER_IMAGE_EXTENSIONS and p.is_file()
        )
        if not found:
            raise DcrError(f"class folder {root / name} has no images ({' '.join(FOLDER_IMAGE_EXTENSIONS)})")
        images += [(path, label) for path in found]
    return classes, images


def _hash_split(root: Path, images: list[tuple[Path, int]], num_classes: int) -> tuple[list, list]:
    """Per class, the ceil(TEST_FRACTION * n) images with the smallest path hashes are the test set."""
    train, test = [], []
    for label in range(num_classes):
        members = sorted(
            (hashlib.sha256(p.relative_to(root).as_posix().encode()).hexdigest(), p)
            for p, lbl in images
            if lbl == label
        )
        if len(members) < 2:
            raise DcrError(
                f"class folder {members[0][1].parent} has one image: a linear probe needs at least two per class"
            )
        cut = math.ceil(TEST_FRACTION * len(members))
        test += [(p, label) for _, p in members[:cut]]
        train += [(p, label) for _, p in members[cut:]]
    return sorted(train), sorted(test)


def fit_linear_probe(
    features: Tensor, labels: Tensor, num_classes: int, weight_decay: float = 1e-3, max_iter: int = 200
) -> Tensor:
    """Multinomial logistic regression by L-BFGS from zeros (deterministic); returns [C, D + 1] (weights, bias).

    Args:
        features: [N, D] training features (fitted in float64).
        labels: [N] class indices.
        num_classes: C, the number of classes.
        weight_decay: coefficient of the squared L2 norm of the weights (not the bias) added to the mean cross-entropy.
        max_iter: L-BFGS iterations.
    """
    x = _with_bias_input(features)
    weight = torch.zeros(num_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weight.T, labels) + weight_decay * weight[:, :-1].pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return weight.detach()


def predict_linear_probe(weight: Tensor, features: Tensor) -> Tensor:
    return (_with_bias_input(features) @ weight.T).argmax(dim=1)


def _with_bias_input(features: Tensor) -> Tensor:
    """[N, D] -> [N, D + 1] in float64, the last column ones (it carries the bias)."""
    return torch.cat([features.double(), torch.ones(len(features), 1, dtype=torch.float64)], dim=1)


def evaluate_classification(
    tower: VisionTower, data: str | Path | ClassificationData, batch_size: int = 64
) -> BenchmarkResult:
    """Zero-shot and linear-probe top-1 (percent) of ``tower`` on an image folder.

    Args:
        tower: the tower scored; its text side encodes the class prompts.
        data: the image folder (``DIR/<class>/*``, optionally split into ``train/`` and ``test/``), or it already read.
        batch_size: images or texts encoded at once.
    """
    data = data if isinstance(data, ClassificationData) else ClassificationData(data)
    train_x = image_embeddings(tower, [p for p, _ in data.train], batch_size, desc="train images")
    test_x = image_embeddings(tower, [p for p, _ in data.test], batch_size, desc="test images")
    train_y = torch.tensor([label for _, label in data.train])
    test_y = torch.tensor([label for _, label in data.test])

    prompts = [f"a photo of a {name.replace('_', ' ')}." for name in data.classes]
    zero_shot = (test_x @ text_embeddings(tower, prompts, batch_size).T).argmax(dim=1)
    probe = predict_linear_probe(fit_linear_probe(train_x, train_y, len(data.classes)), test_x)

    outcomes = {"zero_shot_top1": (zero_shot == test_y).tolist(), "linear_probe_top1": (probe == test_y).tolist()}
    scores = {metric: percent(sum(right), len(right)) for metric, right in outcomes.items()}
    predictions = [
        {
            "image": str(path),
            "label": data.classes[label],
            "zero_shot": data.classes[z],
            "linear_probe": data.classes[p],
        }
        for (path, label), z, p in zip(data.test, zero_shot.tolist(), probe.tolist())
    ]
    return BenchmarkResult(scores, predictions, outcomes)


def evaluate_fine_grained(tower: VisionTower, pairs: list, batch_size: int = 64) -> BenchmarkResult:
    """Percent of ``pairs`` (from ``fine_grained_pairs``) right per attribute, and their mean, by the MMVP-VLM pair rule.

    Statement k is the caption of scene k, so the right answers are ``img1`` then ``img2``.

    Args:
        tower: the tower scored; its text side encodes the captions.
        pairs: ``(attribute, (attributes, image), (attributes, image))`` per pair.
        batch_size: images or texts encoded at once.
    """
    images = image_embeddings(
        tower, [image for _, *scenes in pairs for _, image in scenes], batch_size, desc="pair images"
    )
    texts = text_embeddings(tower, [PROMPT + caption(attrs) for _, *scenes in pairs for attrs, _ in scenes], batch_size)
    verdicts = judge_pairs(tower, images[0::2], images[1::2], texts[0::2], texts[1::2])

    outcomes: dict[str, list[bool]] = {}
    predictions = []
    for index, ((attribute, (attrs1, _), (attrs2, _)), (pred1, pred2, score1, score2)) in enumerate(
        zip(pairs, verdicts)
    ):
        outcomes.setdefault(attribute, []).append(pred1 == "img1" and pred2 == "img2")
        predictions.append(
            {
                "attribute": attribute,
                "pair": index,
                "statement1": caption(attrs1),
                "statement2": caption(attrs2),
                "pred1": pred1,
                "pred2": pred2,
                "img1_score1": score1,
                "img1_score2": score2,
            }
        )
    scores = {attribute: percent(sum(right), len(right)) for attribute, right in outcomes.items()}
    scores["average"] = sum(scores.values()) / len(scores)
    if len({len(right) for right in outcomes.values()}) == 1:  # equal-sized attributes: the average is the pooled mean
        outcomes["average"] = [right for rights in list(outcomes.values()) for right in rights]
    return BenchmarkResult(scores, predictions, outcomes)
