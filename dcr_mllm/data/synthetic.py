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

from PIL import Image, ImageDraw

from dcr_mllm.errors import DcrError

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "purple": (140, 60, 180),
    "orange": (240, 140, 30),
    "white": (245, 245, 245),
}
BACKGROUNDS = {
    "gray": (128, 128, 128),
    "beige": (200, 190, 160),
    "slate": (80, 95, 115),
    "sage": (135, 155, 125),
}
# Every value each attribute can take; sampling, class folders and pairs all read this table.
ATTRIBUTE_VALUES: dict[str, tuple] = {
    "shape": ("circle", "square", "triangle", "star"),
    "colour": tuple(COLOURS),
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
# Unit vector (x right, y down) each orientation points along.
_DIRECTIONS = {"up": (0.0, -1.0), "down": (0.0, 1.0), "left": (-1.0, 0.0), "right": (1.0, 0.0)}
_MARKER_RGB = (25, 25, 25)
_SUPERSAMPLE = 4  # draw large, then downsample: smooth edges at any size
VERSION = 1  # of the generated shards: raise when rendering or sampling changes


@dataclasses.dataclass(frozen=True)
class SceneAttributes:
    """Everything that determines a scene; ``render_scene`` is a pure function of it."""

    shape: str
    colour: str
    count: int
    position: str
    orientation: str
    background: str

    def __post_init__(self):
        for name, allowed in ATTRIBUTE_VALUES.items():
            if getattr(self, name) not in allowed:
                raise DcrError(
                    f"unknown {name} {getattr(self, name)!r}: use one of {', '.join(map(str, allowed))}"
                )


def sample_attributes(rng: random.Random) -> SceneAttributes:
    """Draw every attribute uniformly and independently."""
    return SceneAttributes(
        **{name: rng.choice(values) for name, values in ATTRIBUTE_VALUES.items()}
    )


def caption(attrs: SceneAttributes) -> str:
    """One plain sentence that names every attribute, e.g. for contrastive text or zero-shot prompts."""
    noun = attrs.shape + ("s" if attrs.count > 1 else "")
    return (
        f"{_NUMBER_WORDS[attrs.count]} {attrs.colour} {noun} pointing {attrs.orientation} "
        f"{_POSITION_PHRASES[attrs.position]} of a {attrs.background} background"
    )


def render_scene(attrs: SceneAttributes, size: int) -> Image.Image:
    """Draw the scene as a ``size``×``size`` RGB image; the same attributes give the same pixels.

    Every shape carries a dark arrowhead pointing along its orientation (triangles and stars also
    point that way themselves), so orientation is visible whatever the shape.
    """
    if size < 8:
        raise DcrError(f"image size {size} is too small to draw a scene: use 8 pixels or more")
    big = size * _SUPERSAMPLE
    image = Image.new("RGB", (big, big), BACKGROUNDS[attrs.background])
    draw = ImageDraw.Draw(image)
    for cx, cy, radius in _layout(attrs.position, attrs.count, big):
        direction = _DIRECTIONS[attrs.orientation]
        _draw_shape(draw, attrs.shape, cx, cy, radius, direction, COLOURS[attrs.colour])
        arrow = _arrowhead(cx, cy, radius * 0.45, direction)
        draw.polygon(arrow, fill=_MARKER_RGB)
    return image.resize((size, size), Image.Resampling.LANCZOS)


def _layout(position: str, count: int, size: int) -> list[tuple[float, float, float]]:
    """Centres and radius of ``count`` shapes in a grid inside the region named by ``position``."""
    half, quarter = size / 2, size / 4
    x0, y0, w, h = {
        "left": (0, 0, half, size),
        "right": (half, 0, half, size),
        "top": (0, 0, size, half),
        "bottom": (0, half, size, half),
        "center": (quarter, quarter, half, half),
    }[position]
    if count == 4:
        cols, rows = 2, 2
    elif w >= h:
        cols, rows = count, 1
    else:
        cols, rows = 1, count
    cell_w, cell_h = w / cols, h / rows
    radius = 0.4 * min(cell_w, cell_h)
    return [
        (x0 + (col + 0.5) * cell_w, y0 + (row + 0.5) * cell_h, radius)
        for row in range(rows)
        for col in range(cols)
    ]


def _draw_shape(draw, shape, cx, cy, r, direction, rgb) -> None:
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=rgb)
    elif shape == "square":
        s = r * 0.85
        draw.rectangle((cx - s, cy - s, cx + s, cy + s), fill=rgb)
    elif shape == "triangle":
        draw.polygon(_arrowhead(cx, cy, r, direction), fill=rgb)
    else:  # star: five tips, the first along the orientation
        start = math.atan2(direction[1], direction[0])
        points = []
        for i in range(10):
            angle = start + i * math.pi / 5
            radius = r if i % 2 == 0 else r * 0.45
            points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
        draw.polygon(points, fill=rgb)


def _arrowhead(cx, cy, r, direction) -> list[tuple[float, float]]:
    """A triangle of circumradius ``r`` centred on (cx, cy) whose tip points along ``direction``."""
    dx, dy = direction
    px, py = -dy, dx  # perpendicular
    tip = (cx + dx * r, cy + dy * r)
    back_x, back_y = cx - dx * r * 0.5, cy - dy * r * 0.5
    half_width = r * math.sqrt(3) / 2
    return [
        tip,
        (back_x + px * half_width, back_y + py * half_width),
        (back_x - px * half_width, back_y - py * half_width),
    ]


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
    """
    if num_samples < 1 or samples_per_shard < 1:
        raise DcrError(
            f"num_samples={num_samples}, samples_per_shard={samples_per_shard}: both must be at least 1"
        )
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
                _add_member(tar, f"{key}.jpg", jpeg.getvalue())
                _add_member(tar, f"{key}.txt", caption(attrs).encode())
                _add_member(tar, f"{key}.json", json.dumps(meta, sort_keys=True).encode())
        os.replace(tmp, path)
    return paths


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    """Add a file with fixed metadata (no mtime, owner) so shard bytes are reproducible."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


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
        p
        for p in out_dir.glob(pattern)
        if p.is_file() and p not in wanted_set and not p.name.endswith(".tmp")
    )
    if stale:
        raise DcrError(
            f"{out_dir} holds {len(stale)} files this run would not write (e.g. {stale[0].name}): "
            "delete them or choose an empty directory"
        )


def make_pair(
    rng: random.Random, size: int, differ_in: str
) -> tuple[tuple[SceneAttributes, Image.Image], tuple[SceneAttributes, Image.Image]]:
    """Two scenes identical except for ``differ_in``: one MMVP-style question pair."""
    if differ_in not in ATTRIBUTE_VALUES:
        raise DcrError(f"cannot vary {differ_in!r}: use one of {', '.join(ATTRIBUTE_VALUES)}")
    first = sample_attributes(rng)
    other_values = [v for v in ATTRIBUTE_VALUES[differ_in] if v != getattr(first, differ_in)]
    second = dataclasses.replace(first, **{differ_in: rng.choice(other_values)})
    return (first, render_scene(first, size)), (second, render_scene(second, size))
