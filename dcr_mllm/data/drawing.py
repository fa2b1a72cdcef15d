"""Drawing scenes of simple shapes: the palette, the layout of shapes in a region, the shapes
themselves; shared by the project's two scene generators (``data.synthetic``, the tiny benchmark
scenes, and ``world.scenes``, the tiny world's), which differ only in what they draw with them."""

from __future__ import annotations

import dataclasses
import io
import math
import tarfile
from typing import ClassVar

from dcr_mllm.errors import DcrError

COLORS = {
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
# Unit vector (x right, y down) each orientation points along.
DIRECTIONS = {"up": (0.0, -1.0), "down": (0.0, 1.0), "left": (-1.0, 0.0), "right": (1.0, 0.0)}
SUPERSAMPLE = 4  # draw large, then downsample: smooth edges at any size


def layout(position: str, count: int, size: int) -> list[tuple[float, float, float]]:
    """Centres and radius of ``count`` shapes in a grid inside the region named by ``position``.

    Args:
        position: the region: left, right, top, bottom (halves of the image) or center (its middle quarter).
        count: how many shapes; 4 make a 2x2 grid, other counts a row or column along the region's long side.
        size: side of the square image in pixels (the supersampled canvas when drawing large).
    """
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
        (x0 + (col + 0.5) * cell_w, y0 + (row + 0.5) * cell_h, radius) for row in range(rows) for col in range(cols)
    ]


def draw_shape(draw, shape, cx, cy, r, direction, rgb) -> None:
    """Fill one shape centred on (``cx``, ``cy``).

    Args:
        draw: the ``ImageDraw.Draw`` of the canvas drawn on.
        shape: circle, square, triangle or star.
        cx: x of the centre, pixels from the left.
        cy: y of the centre, pixels from the top.
        r: radius of the shape's circumcircle in pixels.
        direction: unit vector (``DIRECTIONS``) a triangle's tip or a star's first tip points along.
        rgb: the fill: an RGB tuple, or a grey level on a one-channel canvas.
    """
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=rgb)
    elif shape == "square":
        s = r * 0.85
        draw.rectangle((cx - s, cy - s, cx + s, cy + s), fill=rgb)
    elif shape == "triangle":
        draw.polygon(arrowhead(cx, cy, r, direction), fill=rgb)
    else:  # star: five tips, the first along the orientation
        start = math.atan2(direction[1], direction[0])
        points = []
        for i in range(10):
            angle = start + i * math.pi / 5
            radius = r if i % 2 == 0 else r * 0.45
            points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
        draw.polygon(points, fill=rgb)


def arrowhead(cx, cy, r, direction) -> list[tuple[float, float]]:
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


def add_tar_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    """Add a file with fixed metadata (no mtime, owner) so shard bytes are reproducible.

    Args:
        tar: the shard, open for writing.
        name: the member's name in the shard (``key.ext``).
        data: the file's contents.
    """
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


@dataclasses.dataclass(frozen=True)
class Scene:
    """What every scene has (shapes of one kind and colour, how many, where, which way they face),
    each field one of ``VALUES[field]``: a typo is an error, not a new colour. Subclasses add fields."""

    VALUES: ClassVar[dict[str, tuple]] = {}
    shape: str
    color: str
    count: int
    position: str
    orientation: str

    def __post_init__(self):
        for name, allowed in self.VALUES.items():
            if getattr(self, name) not in allowed:
                raise DcrError(f"unknown {name} {getattr(self, name)!r}: use one of {', '.join(map(str, allowed))}")
