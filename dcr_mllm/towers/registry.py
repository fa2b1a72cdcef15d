"""The registered tower families (``TowerFamily``), and how a directory or a LLaVA checkpoint's
vision config names its family. A family module registers its family with one line,
``register_family(FAMILY)``; ``dcr_mllm.towers`` imports the shipped ones (clip, siglip, open_clip).
Where two families claim a directory, the one registered first takes it."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

from dcr_mllm.errors import DcrError
from dcr_mllm.towers.base import TowerFamily

#: family name -> family, in the order registered
FAMILIES: dict[str, TowerFamily] = {}


def register_family(family: TowerFamily) -> TowerFamily:
    """Make ``family`` known to ``inspect_tower``, ``load_tower`` and the LLaVA checks."""
    if family.name in FAMILIES:
        raise ValueError(f"a tower family named {family.name!r} is registered already")
    FAMILIES[family.name] = family
    return family


@contextlib.contextmanager
def registered(family: TowerFamily) -> Iterator[TowerFamily]:
    """``family`` registered for the ``with`` block only (tests, one-off families)."""
    register_family(family)
    try:
        yield family
    finally:
        del FAMILIES[family.name]


def family_of_vision_type(model_type: object) -> TowerFamily | None:
    """The family whose vision model a LLaVA checkpoint's vision config (its ``model_type``) is."""
    return next((f for f in FAMILIES.values() if f.vision_model_type and f.vision_model_type == model_type), None)


def _recognised() -> str:
    """What marks a tower directory, family by family (for error messages)."""
    marks = []
    for family in FAMILIES.values():
        types = " or ".join(t for t in (family.model_type, family.vision_model_type) if t)
        marks.append(f"{family.config_file}{f' with model_type {types}' if types else ''} ({family.name})")
    return "; ".join(marks)


def family_of_dir(path: Path) -> TowerFamily:
    """The family of a tower directory, told by its config file and the ``model_type`` in it.

    A config that is not a JSON object raises AttributeError, as an incomplete config does."""
    present = {family.config_file for family in FAMILIES.values() if (path / family.config_file).is_file()}
    if not present:
        raise DcrError(f"{path} is not a tower directory: it has no tower config file; a tower has {_recognised()}")
    model_types = {name: json.loads((path / name).read_text()).get("model_type") for name in sorted(present)}
    for family in FAMILIES.values():
        if family.config_file in present and family.claims(model_types[family.config_file]):
            return family
    found = ", ".join(f"{name} has model_type {model_type!r}" for name, model_type in model_types.items())
    raise DcrError(f"{path}/{found}; supported towers: {_recognised()}")
