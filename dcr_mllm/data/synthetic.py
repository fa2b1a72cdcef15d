"""Procedural fine-grained images, so the whole pipeline runs offline and in seconds.

Each scene is a few identical shapes on a plain background. The attributes (shape, colour,
count, position, orientation, background) are exactly the fine-grained details that CLIP-family
towers are known to miss, so the same generator feeds stage-one training (webdataset shards in the
img2dataset layout), linear probes and zero-shot tests (class folders), and an MMVP-style
benchmark (pairs of images that differ in one attribute).
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import random
import tarfile
from pathlib import Path
from typing import ClassVar

from PIL import Image, ImageDraw

from dcr_mllm.data.drawing import (
    BACKGROUNDS,
    COLORS,
    DIRECTIONS,
    SUPERSAMPLE,
    Scene,
    add_tar_member,
    arrowhead,
    draw_shape,
    layout,
)
from dcr_mllm.errors import DcrError

# Every value each attribute can take; sampling, class folders and pairs all read this table.
ATTRIBUTE_VALUES: dict[str, tuple] = {
    "shape": ("circle", "square", "triangle", "star"),
    "color": tuple(COLORS),
    "count": (1, 2, 3, 4),
    "position": ("left", "right", "top", "bottom", "center"),
    "orientation": ("up", "down", "left", "right"),
    "background": tuple(BACKGROUNDS),
}

_NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}
_POSITION_PHRASES = {
    "left": "on the left side",
    "right": "on the right side",
    "top": "at the top",
    "bottom": "at the bottom",
    "center": "in the center",
}
_MARKER_RGB = (25, 25, 25)
VERSION = 2  # of the generated shards: raise when rendering or sampling changes (2: the attribute 'color')


@dataclasses.dataclass(frozen=True)
class SceneAttributes(Scene):
    """Everything that determines a scene; ``render_scene`` is a pure function of it."""

    VALUES: ClassVar[dict[str, tuple]] = ATTRIBUTE_VALUES
    background: str


def sample_attributes(rng: random.Random) -> SceneAttributes:
    """Draw every attribute uniformly and independently."""
    return SceneAttributes(**{name: rng.choice(values) for name, values in ATTRIBUTE_VALUES.items()})


def caption(attrs: SceneAttributes) -> str:
    """One plain sentence that names every attribute, e.g. for contrastive text or zero-shot prompts."""
    noun = attrs.shape + ("s" if attrs.count > 1 else "")
    return (
        f"{_NUMBER_WORDS[attrs.count]} {attrs.color} {noun} pointing {attrs.orientation} "
        f"{_POSITION_PHRASES[attrs.position]} of a {attrs.background} background"
    )


def render_scene(attrs: SceneAttributes, size: int) -> Image.Image:
    """Draw the scene as a ``size``×``size`` RGB image; the same attributes give the same pixels.

    Every shape carries a dark arrowhead pointing along its orientation (triangles and stars also
    point that way themselves), so orientation is visible whatever the shape.
    """
    if size < 8:
        raise DcrError(f"image size {size} is too small to draw a scene: use 8 pixels or more")
    big = size * SUPERSAMPLE
    image = Image.new("RGB", (big, big), BACKGROUNDS[attrs.background])
    draw = ImageDraw.Draw(image)
    for cx, cy, radius in layout(attrs.position, attrs.count, big):
        direction = DIRECTIONS[attrs.orientation]
        draw_shape(draw, attrs.shape, cx, cy, radius, direction, COLORS[attrs.color])
        arrow = arrowhead(cx, cy, radius * 0.45, direction)
        draw.polygon(arrow, fill=_MARKER_RGB)
    return image.resize((size, size), Image.Resampling.LANCZOS)


def write_synthetic_shards(
    out_dir: str | Path,
    num_samples: int,
    samples_per_shard: int = 64,
    image_size: int = 64,
    seed: int = 0,
) -> list[Path]:
    """Write image-caption shards laid out like img2dataset's webdataset output.

    ``out_dir/00000.tar, 00001.tar, ...`` hold ``{key}.jpg``, ``{key}.txt`` (the caption) and
    ``{key}.json`` (the attributes plus ``key``); keys are 9-digit global sample indices. The bytes
    depend only on the arguments, so rerunning rewrites identical shards. Each shard is written to
    a temporary name and renamed, so a crash never leaves a half-written shard.

    Args:
        out_dir: the directory of shards; other ``*.tar`` files there are refused.
        num_samples: image-caption pairs in all.
        samples_per_shard: pairs per tar (the last shard may hold fewer).
        image_size: side of each square image in pixels.
        seed: seeds the attribute draws.
    """
    if num_samples < 1 or samples_per_shard < 1:
        raise DcrError(f"num_samples={num_samples}, samples_per_shard={samples_per_shard}: both must be at least 1")
    out_dir = Path(out_dir)
    num_shards = math.ceil(num_samples / samples_per_shard)
    paths = [out_dir / f"{shard:05d}.tar" for shard in range(num_shards)]
    _refuse_stale(out_dir, paths, "*.tar")
    out_dir.mkdir(parents=True, exist_ok=True)

    rng = random.Random(seed)
    for shard, path in enumerate(paths):
        tmp = path.with_name(path.name + ".tmp")
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            first = shard * samples_per_shard
            for index in range(first, min(first + samples_per_shard, num_samples)):
                attrs = sample_attributes(rng)
                key = f"{index:09d}"
                jpeg = io.BytesIO()
                render_scene(attrs, image_size).save(jpeg, format="JPEG", quality=95)
                meta = {**dataclasses.asdict(attrs), "key": key}
                add_tar_member(tar, f"{key}.jpg", jpeg.getvalue())
                add_tar_member(tar, f"{key}.txt", caption(attrs).encode())
                add_tar_member(tar, f"{key}.json", json.dumps(meta, sort_keys=True).encode())
        os.replace(tmp, path)
    return paths


def write_image_folder(
    out_dir: str | Path,
    num_per_class: int,
    image_size: int,
    seed: int,
    by: str = "shape",
) -> list[str]:
    """Write ``out_dir/<class>/<index>.png`` (plus a ``.txt`` caption) with one class per value of ``by``.

    The other attributes are random, so a probe must read ``by`` from the pixels. Returns the
    class names in sorted order, the order ``ImageFolder`` numbers them.

    Args:
        out_dir: the root of the class folders; files there this run would not write are refused.
        num_per_class: images per class.
        image_size: side of each square image in pixels.
        seed: seeds the attribute draws.
        by: the attribute whose values are the classes (a key of ``ATTRIBUTE_VALUES``).
    """
    if by not in ATTRIBUTE_VALUES:
        raise DcrError(f"cannot split classes by {by!r}: use one of {', '.join(ATTRIBUTE_VALUES)}")
    if num_per_class < 1:
        raise DcrError(f"num_per_class={num_per_class}: must be at least 1")
    out_dir = Path(out_dir)
    rng = random.Random(seed)
    planned = []
    for value in ATTRIBUTE_VALUES[by]:
        for index in range(num_per_class):
            attrs = dataclasses.replace(sample_attributes(rng), **{by: value})
            planned.append((out_dir / str(value) / f"{index:05d}", attrs))
    _refuse_stale(
        out_dir,
        [stem.with_suffix(suffix) for stem, _ in planned for suffix in (".png", ".txt")],
        "*/*",
    )
    for stem, attrs in planned:
        stem.parent.mkdir(parents=True, exist_ok=True)
        png = io.BytesIO()
        render_scene(attrs, image_size).save(png, format="PNG")
        _write_atomic(stem.with_suffix(".png"), png.getvalue())
        _write_atomic(stem.with_suffix(".txt"), caption(attrs).encode())
    return sorted(str(value) for value in ATTRIBUTE_VALUES[by])


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _refuse_stale(out_dir: Path, wanted: list[Path], pattern: str) -> None:
    """Refuse to mix in files from an earlier, different run that readers would pick up too."""
    if not out_dir.is_dir():
        return
    wanted_set = set(wanted)
    stale = sorted(
        p for p in out_dir.glob(pattern) if p.is_file() and p not in wanted_set and not p.name.endswith(".tmp")
    )
    if stale:
        raise DcrError(
            f"{out_dir} holds {len(stale)} files this run would not write (e.g. {stale[0].name}): "
            "delete them or choose an empty directory"
        )


def make_pair(
    rng: random.Random, size: int, differ_in: str
) -> tuple[tuple[SceneAttributes, Image.Image], tuple[SceneAttributes, Image.Image]]:
    """Two scenes identical except for ``differ_in``: one MMVP-style question pair.

    Args:
        rng: draws the first scene's attributes and the second's differing value.
        size: side of each square image in pixels.
        differ_in: the attribute the two scenes differ in (a key of ``ATTRIBUTE_VALUES``).
    """
    if differ_in not in ATTRIBUTE_VALUES:
        raise DcrError(f"cannot vary {differ_in!r}: use one of {', '.join(ATTRIBUTE_VALUES)}")
    first = sample_attributes(rng)
    other_values = [v for v in ATTRIBUTE_VALUES[differ_in] if v != getattr(first, differ_in)]
    second = dataclasses.replace(first, **{differ_in: rng.choice(other_values)})
    return (first, render_scene(first, size)), (second, render_scene(second, size))
