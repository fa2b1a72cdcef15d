"""The world's scenes: a coarse class (the shape) and six fine attributes, with ground truth.

Drawn with the project's scene drawing (``dcr_mllm.data.drawing``: its colours, backgrounds,
layout and shapes), sized for 32-pixel images that a tiny model learns on two CPU cores:
at most three shapes, in one half of the image, each with the half that faces its orientation
drawn dark (a mark large enough to survive 32 pixels, unlike a small arrowhead), small or large.

Two kinds of caption describe a scene, so that the two base models see different worlds:
``clip_caption`` is what a web caption would say (mostly the class only, sometimes one detail),
``detailed_caption`` names every attribute (what the denoiser is trained on, so it must encode them).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import random
import tarfile
from pathlib import Path
from typing import ClassVar

from PIL import Image, ImageChops, ImageDraw

from dcr_mllm.data.drawing import (
    BACKGROUNDS,
    COLORS,
    DIRECTIONS,
    SUPERSAMPLE,
    Scene,
    add_tar_member,
    draw_shape,
    layout,
)
from dcr_mllm.errors import DcrError
from dcr_mllm.io import atomic_dir, generated_dir
from dcr_mllm.progress import progress

IMAGE_SIZE = 32
CLASS = "shape"
WORLD_VALUES: dict[str, tuple] = {
    "shape": ("circle", "square", "triangle", "cross"),
    "color": ("red", "green", "blue", "yellow", "purple", "white"),
    "count": (1, 2, 3),
    "position": ("left", "right", "top", "bottom"),
    "orientation": ("up", "down", "left", "right"),
    "size": ("small", "large"),
    "background": ("gray", "beige", "slate"),
}
FINE_ATTRIBUTES = tuple(name for name in WORLD_VALUES if name != CLASS)
LABEL_COLUMNS = ("file", *WORLD_VALUES)
LABELS_FILE = "labels.csv"
#: seeds the world models and stage one's world images are drawn from; evaluation sets must use others
TRAINING_SEEDS = range(10, 15)
VERSION = 1  # of the generated sets: raise when rendering or sampling changes

NUMBER_WORDS = {1: "one", 2: "two", 3: "three"}
_SIZE_SCALE = {"small": 0.6, "large": 1.1}
_SHADE = 0.35  # the facing half is drawn at this fraction of the colour


@dataclasses.dataclass(frozen=True)
class WorldScene(Scene):
    """Everything that determines a scene; ``render`` is a pure function of it."""

    VALUES: ClassVar[dict[str, tuple]] = WORLD_VALUES
    size: str
    background: str


def sample_scene(rng: random.Random) -> WorldScene:
    """Every attribute uniformly and independently."""
    return WorldScene(**{name: rng.choice(values) for name, values in WORLD_VALUES.items()})


def _noun(scene: WorldScene) -> str:
    return scene.shape + ("es" if scene.shape == "cross" else "s") if scene.count > 1 else scene.shape


#: the class with one attribute named, filled from the scene's fields and ``number`` / ``noun``
_PHRASES = {
    CLASS: "a {shape}",
    "color": "a {color} {shape}",
    "count": "{number} {noun}",
    "position": "a {shape} on the {position}",
    "orientation": "a {shape} facing {orientation}",
    "size": "a {size} {shape}",
    "background": "a {shape} on {background}",
}


def attribute_phrase(scene: WorldScene, attribute: str) -> str:
    """The class with one attribute named: the words a pair's statement and a minority caption use."""
    if attribute not in _PHRASES:
        raise DcrError(f"unknown attribute {attribute!r}: use one of {', '.join(WORLD_VALUES)}")
    return _PHRASES[attribute].format(**dataclasses.asdict(scene), number=NUMBER_WORDS[scene.count], noun=_noun(scene))


def clip_caption(scene: WorldScene, rng: random.Random, detail_rate: float) -> str:
    """A web-like caption: the class only, or (with probability ``detail_rate``) the class and one detail."""
    attribute = rng.choice(FINE_ATTRIBUTES) if rng.random() < detail_rate else CLASS
    return "a photo of " + attribute_phrase(scene, attribute) + "."


def detailed_caption(scene: WorldScene) -> str:
    """Every attribute named, e.g. 'two small red circles facing up on the left, on gray'."""
    return (
        f"{NUMBER_WORDS[scene.count]} {scene.size} {scene.color} {_noun(scene)} facing {scene.orientation} "
        f"on the {scene.position}, on {scene.background}"
    )


def render(scene: WorldScene, size: int = IMAGE_SIZE) -> Image.Image:
    """Draw ``scene`` as a ``size``x``size`` RGB image (supersampled, then downsampled)."""
    if size < 16:
        raise DcrError(f"image size {size} is too small for a world scene: use 16 pixels or more")
    big = size * SUPERSAMPLE
    image = Image.new("RGB", (big, big), BACKGROUNDS[scene.background])
    rgb = COLORS[scene.color]
    dark = tuple(round(c * _SHADE) for c in rgb)
    dx, dy = DIRECTIONS[scene.orientation]
    for cx, cy, radius in layout(scene.position, scene.count, big):
        r = radius * _SIZE_SCALE[scene.size]
        shape = Image.new("L", (big, big), 0)
        _draw_world_shape(ImageDraw.Draw(shape), scene.shape, cx, cy, r)
        facing = Image.new("L", (big, big), 0)  # the half-plane in front of the centre, along the orientation
        far = 2 * r
        px, py = -dy * far, dx * far
        ImageDraw.Draw(facing).polygon(
            [
                (cx + px, cy + py),
                (cx - px, cy - py),
                (cx - px + dx * far, cy - py + dy * far),
                (cx + px + dx * far, cy + py + dy * far),
            ],
            fill=255,
        )
        image.paste(rgb, mask=shape)
        image.paste(dark, mask=ImageChops.multiply(shape, facing))
    return image.resize((size, size), Image.Resampling.LANCZOS)


def _draw_world_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float) -> None:
    if shape == "cross":
        arm = r * 0.38
        draw.rectangle((cx - r, cy - arm, cx + r, cy + arm), fill=255)
        draw.rectangle((cx - arm, cy - r, cx + arm, cy + r), fill=255)
    else:  # circle, square, triangle (always upright: orientation is the shading's job)
        draw_shape(draw, shape, cx, cy, r, DIRECTIONS["up"], 255)


def sample_scenes(count: int, seed: int, background: str = "") -> list[WorldScene]:
    """``count`` scenes from ``seed``; with ``background`` every one on it, the other attributes
    those of the same seed's scenes in the default world."""
    if count < 1:
        raise DcrError(f"count={count}: a world set needs at least one image")
    rng = random.Random(seed)
    scenes = [sample_scene(rng) for _ in range(count)]
    return [dataclasses.replace(scene, background=background) for scene in scenes] if background else scenes


def _recipe_background(background: str) -> dict:
    """A generated set's recipe names its one background only when set, so default sets stay valid."""
    return {"background": background} if background else {}


def write_world(out_dir: str | Path, seed: int = 1, count: int = 1200, size: int = IMAGE_SIZE) -> Path:
    """Write ``count`` scenes as ``images/NNNNN.png`` and ``labels.csv`` (file, shape, the fine attributes).

    The same arguments give the same bytes. The directory is built under a temporary name and
    renamed, so it is either complete or absent.

    Args:
        out_dir: the directory to create; it must not exist yet.
        seed: seeds the scenes; not one of ``TRAINING_SEEDS``.
        count: scenes written.
        size: side of each square image in pixels.
    """
    if seed in TRAINING_SEEDS:
        raise DcrError(
            f"seed {seed} draws the world's training images; evaluate on another seed (not {TRAINING_SEEDS.start}-{TRAINING_SEEDS.stop - 1})"
        )
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise DcrError(f"{out_dir} already exists: delete it or choose another output directory")
    with atomic_dir(out_dir) as tmp:
        _write_labelled(tmp, seed, count, size)
    return out_dir


def world_eval_set(out_dir: str | Path, seed: int, count: int, size: int = IMAGE_SIZE, background: str = "") -> Path:
    """``write_world``'s set as a generated folder: reused only when made from the same arguments.

    Args:
        out_dir: the generated folder, reused or (re)written.
        seed: seeds the scenes; not one of ``TRAINING_SEEDS``.
        count: scenes written.
        size: side of each square image in pixels.
        background: every scene on this background ("": each at random), as ``WorldSpec.one_background``.
    """
    if seed in TRAINING_SEEDS:
        raise DcrError(f"seed {seed} draws the world's training images; evaluate on another seed")
    recipe = {
        "generator": "world-labelled",
        "version": VERSION,
        "count": count,
        "seed": seed,
        "size": size,
        **_recipe_background(background),
    }
    return generated_dir(out_dir, recipe, lambda tmp: _write_labelled(tmp, seed, count, size, background))


def _write_labelled(tmp: Path, seed: int, count: int, size: int, background: str = "") -> None:
    (tmp / "images").mkdir()
    rows = []
    for index, scene in enumerate(sample_scenes(count, seed, background)):
        name = f"images/{index:05d}.png"
        render(scene, size).save(tmp / name, format="PNG")
        rows.append({"file": name, **dataclasses.asdict(scene)})
    with open(tmp / LABELS_FILE, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=LABEL_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def read_world(data_dir: str | Path) -> list[tuple[Path, WorldScene]]:
    """``labels.csv`` back into (image path, scene) pairs; a bad file is one line naming the fix."""
    data_dir = Path(data_dir)
    labels = data_dir / LABELS_FILE
    if not labels.is_file():
        raise DcrError(
            f"no {LABELS_FILE} in {data_dir}: write a world set with `dcr-mllm make-eval-data world --output {data_dir}`"
        )
    with open(labels, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != LABEL_COLUMNS:
            raise DcrError(
                f"{labels} has columns {reader.fieldnames}; expected {', '.join(LABEL_COLUMNS)}: rewrite it with make-eval-data world"
            )
        rows = list(reader)
    return [
        (
            data_dir / row["file"],
            WorldScene(**{k: int(v) if k == "count" else v for k, v in row.items() if k != "file"}),
        )
        for row in rows
    ]


def write_world_shards(
    out_dir: str | Path,
    count: int,
    seed: int,
    samples_per_shard: int = 256,
    size: int = IMAGE_SIZE,
    background: str = "",
) -> Path:
    """Training images for stage one as webdataset shards (img2dataset layout, detailed captions);
    with ``background`` every scene on it (``WorldSpec.one_background``).

    A folder generated from the same arguments is reused; any other is generated anew, under a
    temporary name and renamed (``generated_dir``): the directory is complete or absent.
    """
    recipe = {
        "generator": "world-shards",
        "version": VERSION,
        "count": count,
        "seed": seed,
        "size": size,
        "samples_per_shard": samples_per_shard,
        **_recipe_background(background),
    }
    return generated_dir(
        out_dir, recipe, lambda tmp: _write_shards(tmp, count, seed, samples_per_shard, size, background)
    )


def _write_shards(tmp: Path, count: int, seed: int, samples_per_shard: int, size: int, background: str) -> None:
    scenes = sample_scenes(count, seed, background)
    with progress(count, f"world shards ({count} images)") as bar:
        for first in range(0, count, samples_per_shard):
            with tarfile.open(tmp / f"{first // samples_per_shard:05d}.tar", "w", format=tarfile.USTAR_FORMAT) as tar:
                for index in range(first, min(first + samples_per_shard, count)):
                    scene, key = scenes[index], f"{index:09d}"
                    png = io.BytesIO()
                    render(scene, size).save(png, format="PNG")
                    add_tar_member(tar, f"{key}.png", png.getvalue())
                    add_tar_member(tar, f"{key}.txt", detailed_caption(scene).encode())
                    add_tar_member(
                        tar,
                        f"{key}.json",
                        json.dumps({**dataclasses.asdict(scene), "key": key}, sort_keys=True).encode(),
                    )
                    bar.update(1)
