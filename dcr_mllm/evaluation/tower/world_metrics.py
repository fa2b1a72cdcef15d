"""Tower metrics in the world, from a ``make-eval-data world`` directory (ground-truth labels).

- ``pairs/<attribute>``: MMVP-VLM-style pairs, two scenes that differ in one fine attribute, each
  statement naming the class and that attribute ("a photo of a red circle"), scored by the
  MMVP-VLM pair rule with the tower's own text encoder (``evaluation.tower.pairs``); ``pairs/mean``.
- ``probe_global/<attribute>`` and ``probe_layer/<attribute>``: linear-probe accuracy of every
  attribute from frozen image features: the global embedding (what DCR conditions the denoiser
  on, and what CLIP matches to text) and the mean of LLaVA's feature layer (-2) patch tokens.
  The first two thirds of the set train the probe, the last third tests it; ``.../fine_mean`` is
  the mean over the fine attributes (everything but the class), ``.../claim_mean`` over
  ``CLAIM_ATTRIBUTES``, the ones the paper's claim is judged on.
- ``class/zero_shot`` and ``class/probe`` (D-Ability): the shape from "a photo of a {shape}." and
  from the global-embedding probe.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
from pathlib import Path

import torch
from torch import Tensor

from dcr_mllm.errors import DcrError
from dcr_mllm.evaluation.tower.encode import image_embeddings, open_image, text_embeddings
from dcr_mllm.evaluation.tower.pairs import PROMPT, judge_pairs, percent
from dcr_mllm.evaluation.tower.probes import fit_linear_probe, predict_linear_probe
from dcr_mllm.towers import VisionTower, load_tower
from dcr_mllm.world.scenes import (
    CLASS,
    FINE_ATTRIBUTES,
    WORLD_VALUES,
    attribute_phrase,
    read_world,
    render,
    sample_scene,
)

FEATURE_LAYER = -2  # LLaVA-1.5's mm_vision_select_layer


def world_pairs(pairs_per_attribute: int, seed: int, background: str = "") -> list[tuple[str, object, object]]:
    """``(attribute, scene 1, scene 2)``: scenes identical except for one fine attribute; with
    ``background``, every first scene on it (a one-background world's own scenes)."""
    rng = random.Random(seed)
    pairs = []
    for attribute in FINE_ATTRIBUTES:
        for _ in range(pairs_per_attribute):
            first = sample_scene(rng)
            if background:
                first = dataclasses.replace(first, background=background)
            other = rng.choice([v for v in WORLD_VALUES[attribute] if v != getattr(first, attribute)])
            pairs.append((attribute, first, dataclasses.replace(first, **{attribute: other})))
    return pairs


@torch.inference_mode()
def layer_features(tower: VisionTower, images, batch_size: int = 128) -> Tensor:
    """[N, width]: the mean of the feature layer's patch tokens."""
    out = []
    for start in range(0, len(images), batch_size):
        pixels = tower.preprocess(images[start : start + batch_size]).to(tower.mean.device)
        out.append(tower.patch_features(pixels, FEATURE_LAYER).mean(dim=1).float().cpu())
    return torch.cat(out)


def _probe_outcomes(features: Tensor, labels: list, cut: int) -> list[bool]:
    """Whether a linear probe fitted on the first ``cut`` images gets each later image right."""
    values = sorted(set(labels), key=str)
    y = torch.tensor([values.index(v) for v in labels])
    mean, std = features[:cut].mean(0), features[:cut].std(0) + 1e-6
    x = (features - mean) / std
    weight = fit_linear_probe(x[:cut], y[:cut], len(values))
    return (predict_linear_probe(weight, x[cut:]) == y[cut:]).tolist()


@dataclasses.dataclass
class WorldSet:
    """A labelled world folder and its MMVP-style pairs, read and rendered once, so evaluating
    many towers (or one tower at many steps) pays only for the towers."""

    images: list
    scenes: list
    pairs: list[tuple[str, object, object]]
    pair_images: list

    @classmethod
    def read(cls, data_dir: str | Path, pairs_per_attribute: int = 30, pair_seed: int = 1001) -> WorldSet:
        items = read_world(data_dir)
        if len(items) < 12:
            raise DcrError(
                f"{data_dir} has {len(items)} images; the probes need at least 12 (make-eval-data world --count N)"
            )
        images = [open_image(path) for path, _ in items]
        backgrounds = {scene.background for _, scene in items}  # one: a one-background world's set
        pairs = world_pairs(pairs_per_attribute, pair_seed, backgrounds.pop() if len(backgrounds) == 1 else "")
        size = images[0].width
        return cls(
            images, [scene for _, scene in items], pairs, [render(scene, size) for _, *two in pairs for scene in two]
        )


#: what a tower trained on class-mostly captions misses and DCR is claimed to restore; size and
#: background are seen by any tower in the world (``dcr-mllm world premise`` measures it)
CLAIM_ATTRIBUTES = ("color", "count", "position", "orientation")


def evaluate_world(
    tower: VisionTower,
    data: str | Path | WorldSet,
    pairs_per_attribute: int = 30,
    outcomes: dict[str, list[bool]] | None = None,
) -> dict[str, float]:
    """Every world metric of ``tower`` (percent), on a labelled folder (or its ``WorldSet``).

    Args:
        tower: the tower scored.
        data: a ``make-eval-data world`` directory, or its ``WorldSet`` already read.
        pairs_per_attribute: MMVP-style pairs per fine attribute when ``data`` is a directory.
        outcomes: filled, where given, with whether each item was right, per metric scored on items
            (the report's intervals and paired tests); the means of attributes have none.
    """
    outcomes = {} if outcomes is None else outcomes
    world = data if isinstance(data, WorldSet) else WorldSet.read(data, pairs_per_attribute)
    images, scenes, pairs = world.images, world.scenes, world.pairs
    cut = (2 * len(images)) // 3
    features = {
        "probe_global": image_embeddings(tower, images, 128, desc="world images"),
        "probe_layer": layer_features(tower, images),
    }
    scores: dict[str, float] = {}
    for kind, x in features.items():
        for attribute in WORLD_VALUES:
            right = _probe_outcomes(x, [getattr(s, attribute) for s in scenes], cut)
            outcomes[f"{kind}/{attribute}"] = right
            scores[f"{kind}/{attribute}"] = percent(sum(right), len(right))
        scores[f"{kind}/fine_mean"] = sum(scores[f"{kind}/{a}"] for a in FINE_ATTRIBUTES) / len(FINE_ATTRIBUTES)
        scores[f"{kind}/claim_mean"] = sum(scores[f"{kind}/{a}"] for a in CLAIM_ATTRIBUTES) / len(CLAIM_ATTRIBUTES)

    shapes = list(WORLD_VALUES[CLASS])
    prompts = text_embeddings(tower, [f"a photo of a {shape}." for shape in shapes], 64)
    guess = (features["probe_global"][cut:] @ prompts.T).argmax(dim=1)
    truth = torch.tensor([shapes.index(s.shape) for s in scenes[cut:]])
    outcomes["class/zero_shot"] = (guess == truth).tolist()
    scores["class/zero_shot"] = percent(sum(outcomes["class/zero_shot"]), len(truth))
    scores["class/probe"] = scores[f"probe_global/{CLASS}"]
    outcomes["class/probe"] = outcomes[f"probe_global/{CLASS}"]

    pair_images = image_embeddings(tower, world.pair_images, 128, desc="pair images")
    texts = text_embeddings(
        tower, [PROMPT + attribute_phrase(scene, attribute) for attribute, *two in pairs for scene in two], 128
    )
    verdicts = judge_pairs(tower, pair_images[0::2], pair_images[1::2], texts[0::2], texts[1::2])
    for attribute in FINE_ATTRIBUTES:
        right = [p1 == "img1" and p2 == "img2" for (a, *_), (p1, p2, *_) in zip(pairs, verdicts) if a == attribute]
        outcomes[f"pairs/{attribute}"] = right
        scores[f"pairs/{attribute}"] = percent(sum(right), len(right))
    scores["pairs/mean"] = sum(scores[f"pairs/{a}"] for a in FINE_ATTRIBUTES) / len(FINE_ATTRIBUTES)
    return scores


def main(argv: list[str] | None = None) -> None:
    """``python -m dcr_mllm.evaluation.tower.world_metrics --data DIR --tower DIR --output JSON [--tower DIR
    --output JSON ...]``: each tower in turn, one thread, the set read once; each result written when done."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--tower", required=True, action="append")
    parser.add_argument("--data", required=True)
    parser.add_argument("--output", required=True, action="append", help="one per --tower, in the same order")
    parser.add_argument("--pairs", type=int, default=30)
    args = parser.parse_args(argv)
    if len(args.tower) != len(args.output):
        parser.error(f"{len(args.tower)} --tower but {len(args.output)} --output: give one output per tower")
    torch.set_num_threads(1)
    world = WorldSet.read(args.data, args.pairs)
    for tower, output in zip(args.tower, args.output):
        scores = evaluate_world(load_tower(tower), world)
        tmp = Path(output + ".tmp")
        tmp.write_text(json.dumps(scores, indent=1, sort_keys=True))
        tmp.replace(output)


if __name__ == "__main__":
    main()
