"""Synthetic evaluation data from the project's scene generator (``dcr_mllm.data.synthetic``).

So that tests, the tiny pipeline and users without the downloads can run every evaluation:

- ``write_mmvp_vlm``: a benchmark directory in the official MMVP-VLM layout, 9 categories x 15
  pairs; each pair is two scenes from ``make_pair`` that differ in one attribute, and each
  statement is the caption of its scene. The scenes have six attributes, so each category is
  mapped to the attribute closest to it (``CATEGORY_ATTRIBUTES``); three have no natural
  counterpart and use a stand-in: *State and Condition* varies the background, *Texts* the count
  (a number to read off the image) and *Viewpoint and Perspective* the position (where the shapes
  sit in the frame).
- ``write_classification_folder``: ``train/`` and ``test/`` image folders with a class per shape,
  for the zero-shot and linear probes.
- ``fine_grained_pairs``: scene pairs per attribute, in memory, for the fine-grained pairs probe.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

from PIL import Image

from dcr_mllm.data.synthetic import ATTRIBUTE_VALUES, SceneAttributes, caption, make_pair, write_image_folder
from dcr_mllm.data.synthetic import VERSION as SYNTHETIC_VERSION
from dcr_mllm.errors import DcrError
from dcr_mllm.evaluation.tower.mmvp_vlm import CATEGORIES, IMAGES_DIR, PAIRS_PER_CATEGORY, QUESTIONS_FILE
from dcr_mllm.io import GENERATED, atomic_dir, generated_dir

CATEGORY_ATTRIBUTES = {
    "Orientation and Direction": "orientation",
    "Presence of Specific Features": "shape",
    "State and Condition": "background",  # stand-in
    "Quantity and Count": "count",
    "Positional and Relational Context": "position",
    "Color and Appearance": "color",
    "Structural Characteristics": "shape",
    "Texts": "count",  # stand-in
    "Viewpoint and Perspective": "position",  # stand-in
}
# Short type names: the image folder of each category (the official type column is free text).
CATEGORY_TYPES = {
    "Orientation and Direction": "Orientation",
    "Presence of Specific Features": "Presence",
    "State and Condition": "State",
    "Quantity and Count": "Quantity",
    "Positional and Relational Context": "Spatial",
    "Color and Appearance": "Color",
    "Structural Characteristics": "Structural Character",
    "Texts": "Text",
    "Viewpoint and Perspective": "Camera Perspective",
}


def write_mmvp_vlm(out_dir: str | Path, image_size: int = 224, seed: int = 0) -> Path:
    """Write a 270-statement MMVP-VLM directory; the same arguments give the same files.

    Pair k has question ids 2k+1 (the first scene) and 2k+2 (the second). The directory is built
    under a temporary name and renamed, so it is either complete or absent.

    Args:
        out_dir: the benchmark directory to create; it must not exist yet.
        image_size: side of each square image in pixels.
        seed: seeds the scene draws.
    """
    out_dir = Path(out_dir)
    _refuse_existing(out_dir)
    with atomic_dir(out_dir) as tmp:
        _fill_mmvp_vlm(tmp, image_size, seed)
        _record(tmp, _mmvp_vlm_recipe(image_size, seed))
    return out_dir


def _fill_mmvp_vlm(tmp: Path, image_size: int, seed: int) -> None:
    rng = random.Random(seed)
    rows = [("Question ID", "Type", "Statement")]
    qid = 1
    for category in CATEGORIES:
        qtype = CATEGORY_TYPES[category]
        folder = tmp / IMAGES_DIR / qtype
        folder.mkdir(parents=True)
        for _ in range(PAIRS_PER_CATEGORY):
            for attrs, image in make_pair(rng, image_size, CATEGORY_ATTRIBUTES[category]):
                image.save(folder / f"{qid}.jpg", format="JPEG", quality=95)
                rows.append((str(qid), qtype, caption(attrs)))
                qid += 1
    with open(tmp / QUESTIONS_FILE, "w", newline="", encoding="utf-8") as f:
        csv.writer(f, lineterminator="\n").writerows(rows)


def write_classification_folder(
    out_dir: str | Path, per_class: int = 20, image_size: int = 224, seed: int = 0, by: str = "shape"
) -> Path:
    """Write ``train/<class>/`` and ``test/<class>/`` (``per_class`` images each), a class per value of ``by``.

    Args:
        out_dir: the folder to create; it must not exist yet.
        per_class: images per class in each split.
        image_size: side of each square image in pixels.
        seed: seeds the train split's scenes; the test split's use ``seed + 1``.
        by: the attribute whose values are the classes (a key of ``ATTRIBUTE_VALUES``).
    """
    out_dir = Path(out_dir)
    _refuse_existing(out_dir)
    with atomic_dir(out_dir) as tmp:
        _fill_classification(tmp, per_class, image_size, seed, by)
        _record(tmp, _classification_recipe(per_class, image_size, seed, by))
    return out_dir


def _fill_classification(tmp: Path, per_class: int, image_size: int, seed: int, by: str) -> None:
    write_image_folder(tmp / "train", per_class, image_size, seed, by=by)
    write_image_folder(tmp / "test", per_class, image_size, seed + 1, by=by)


def mmvp_vlm_set(out_dir: str | Path, image_size: int = 224, seed: int = 0) -> Path:
    """``write_mmvp_vlm``'s set as a generated folder: reused only when made from the same arguments.

    Args:
        out_dir: the generated folder, reused or (re)written.
        image_size: side of each square image in pixels.
        seed: seeds the scene draws.
    """
    recipe = _mmvp_vlm_recipe(image_size, seed)
    return generated_dir(out_dir, recipe, lambda tmp: _fill_mmvp_vlm(tmp, image_size, seed))


def classification_set(
    out_dir: str | Path, per_class: int = 20, image_size: int = 224, seed: int = 0, by: str = "shape"
) -> Path:
    """``write_classification_folder``'s set as a generated folder: reused only when made from the same arguments.

    Args:
        out_dir: the generated folder, reused or (re)written.
        per_class: images per class in each split.
        image_size: side of each square image in pixels.
        seed: seeds the train split's scenes; the test split's use ``seed + 1``.
        by: the attribute whose values are the classes (a key of ``ATTRIBUTE_VALUES``).
    """
    recipe = _classification_recipe(per_class, image_size, seed, by)
    return generated_dir(out_dir, recipe, lambda tmp: _fill_classification(tmp, per_class, image_size, seed, by))


def _mmvp_vlm_recipe(image_size: int, seed: int) -> dict:
    return {"generator": "synthetic-mmvp-vlm", "version": SYNTHETIC_VERSION, "image_size": image_size, "seed": seed}


def _classification_recipe(per_class: int, image_size: int, seed: int, by: str) -> dict:
    return {
        "generator": "synthetic-classification",
        "version": SYNTHETIC_VERSION,
        "per_class": per_class,
        "image_size": image_size,
        "seed": seed,
        "by": by,
    }


def _record(folder: Path, recipe: dict) -> None:
    """What a written set was generated from, as ``generated_dir`` records it: evaluations read it to
    say that their numbers come from stand-ins."""
    (folder / GENERATED).write_text(json.dumps(recipe, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def fine_grained_pairs(
    pairs_per_attribute: int, image_size: int = 224, seed: int = 0
) -> list[tuple[str, tuple[SceneAttributes, Image.Image], tuple[SceneAttributes, Image.Image]]]:
    """``(attribute, scene 1, scene 2)`` for ``pairs_per_attribute`` pairs of each attribute, in a fixed order.

    Args:
        pairs_per_attribute: pairs that differ in each attribute.
        image_size: side of each square image in pixels.
        seed: seeds the scene draws.
    """
    if pairs_per_attribute < 1:
        raise DcrError(f"pairs_per_attribute={pairs_per_attribute}: must be at least 1")
    rng = random.Random(seed)
    return [
        (attribute, *make_pair(rng, image_size, attribute))
        for attribute in ATTRIBUTE_VALUES
        for _ in range(pairs_per_attribute)
    ]


def _refuse_existing(out_dir: Path) -> None:
    if out_dir.exists():
        raise DcrError(f"{out_dir} already exists: delete it or choose another output directory")
