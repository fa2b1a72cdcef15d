"""A tower family is one module and one registry entry: nothing outside the family modules branches on a
family's name, and a newly registered family is recognised, loaded and taken by LLaVA with no other change."""

import ast
from pathlib import Path

import pytest
import torch

from dcr_mllm.errors import DcrError
from dcr_mllm.llava.build import vision_layout
from dcr_mllm.llava.checkpoints.checkpoint import read_tower
from dcr_mllm.towers import FAMILIES, inspect_tower, load_tower
from dcr_mllm.towers.clip import CLIP
from dcr_mllm.towers.registry import family_of_vision_type, register_family, registered

PACKAGE = Path(__file__).resolve().parents[2] / "dcr_mllm"


def family_words() -> set[str]:
    """What only a family module may compare with: every registered family's name and model types."""
    return {w for f in FAMILIES.values() for w in (f.name, f.model_type, f.vision_model_type) if w}


def registers_a_family(tree: ast.Module) -> bool:
    """A family module calls ``register_family`` at its top level."""
    return any(
        isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Call)
        and getattr(node.value.func, "id", getattr(node.value.func, "attr", None)) == "register_family"
        for node in tree.body
    )


def family_comparisons(source: str, words: set[str]) -> list[int]:
    """Lines that branch on a family word: a comparison (``==``, ``!=``, ``in``, ``not in``, ``is``)
    with a string literal that is one, alone or inside a literal tuple, list, set or dict's keys,
    and a ``match`` case on one. A family word used as a name is not branching: a dictionary key
    or subscript (the tiny preset's ``clip/`` and ``siglip/`` folders), an argument, a message."""

    def literals(node: ast.AST) -> list[ast.AST]:
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return list(node.elts)
        if isinstance(node, ast.Dict):
            return [k for k in node.keys if k is not None]
        return [node]

    def is_word(node: ast.AST) -> bool:
        return isinstance(node, ast.Constant) and node.value in words

    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            if any(is_word(item) for operand in operands for item in literals(operand)):
                lines.append(node.lineno)
        elif isinstance(node, ast.match_case):
            values = [p.value for p in ast.walk(node.pattern) if isinstance(p, ast.MatchValue)]
            if any(is_word(value) for value in values):
                lines.append(node.pattern.lineno)
    return lines


def test_the_rule_finds_comparisons_and_lets_names_be():
    words = {"clip", "siglip"}
    branching = """
if family == "clip": pass
if "siglip" != name: pass
if model_type in ("clip", "bert"): pass
if kind not in {"siglip": 1}: pass
match name:
    case "clip": pass
"""
    assert family_comparisons(branching, words) == [2, 3, 4, 5, 7]
    names = """
BUILDERS = {"clip": build_clip, "siglip": build_siglip}
path = tiny["clip"]
Backbone("clip-l14", "openai/clip", "clip")
raise DcrError(f"a clip tower: {name == 'clip-l14'}")
if name in BUILDERS: pass
"""
    assert family_comparisons(names, words) == []


def test_no_module_outside_the_family_modules_branches_on_a_family_name():
    words = family_words()
    assert {"clip", "siglip", "open_clip", "clip_vision_model"} <= words  # the registry is read, not empty
    found, family_modules = [], []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        if registers_a_family(ast.parse(source)):
            family_modules.append(path.name)
            continue
        found += [f"{path.relative_to(PACKAGE.parent)}:{line}" for line in family_comparisons(source, words)]
    assert family_modules == ["clip.py", "openclip.py", "siglip.py"]
    assert found == [], "ask the family (dcr_mllm.towers.registry) instead of comparing its name"


def test_a_family_counts_only_while_registered(toy_family, toy_dir):
    shipped = list(FAMILIES)
    with pytest.raises(DcrError, match="model_type 'toy_clip'; supported towers: config.json with model_type clip"):
        inspect_tower(toy_dir)
    with registered(toy_family):
        assert inspect_tower(toy_dir).family is toy_family
        with pytest.raises(ValueError, match="'toy_clip' is registered already"):
            register_family(toy_family)
    assert list(FAMILIES) == shipped
    with pytest.raises(DcrError, match="model_type 'toy_clip'"):
        inspect_tower(toy_dir)


def test_a_registered_family_is_loaded_and_taken_by_llava(toy_family, toy_dir, tiny):
    with registered(toy_family):
        spec, clip_spec = inspect_tower(toy_dir), inspect_tower(tiny["clip"])
        assert spec.family is toy_family and clip_spec.family is CLIP
        assert (spec.num_patches, spec.global_dim, spec.has_cls) == (clip_spec.num_patches, clip_spec.global_dim, True)
        for vision_only in (False, True):
            tower, clip = (
                load_tower(toy_dir, vision_only=vision_only),
                load_tower(tiny["clip"], vision_only=vision_only),
            )
            pixels = clip.normalize(torch.rand(2, 3, 32, 32))
            torch.testing.assert_close(tower.global_embedding(pixels), clip.global_embedding(pixels))
            torch.testing.assert_close(tower.patch_features(pixels), clip.patch_features(pixels))
        assert vision_layout(toy_dir) == vision_layout(tiny["clip"])  # the CLS dropped, as the family says
        assert read_tower(toy_dir).vision_config == read_tower(tiny["clip"]).vision_config
        assert family_of_vision_type("clip_vision_model") is CLIP  # the first registered keeps its vision type


def test_a_family_llava_cannot_take_is_refused_in_one_line(tiny):
    for check in (vision_layout, read_tower):
        with pytest.raises(
            DcrError, match=r"open_clip tower there cannot go into LLaVA.*convert the tower to HF"
        ) as err:
            check(tiny["open_clip"])
        assert "\n" not in str(err.value)
