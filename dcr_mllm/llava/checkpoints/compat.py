"""Does a tower fit a LLaVA checkpoint? Shape facts, feature layers and stored tensors, one line per
mismatch; shared by ``swap-tower``, ``convert-llava`` and the ``dcr_llava`` lmms-eval model."""

from __future__ import annotations

import re

from dcr_mllm.llava.checkpoints.checkpoint import Checkpoint, Tower
from dcr_mllm.presets.real import BACKBONES, Backbone, real_preset
from dcr_mllm.towers import TowerSpec
from dcr_mllm.towers.registry import FAMILIES

LAYER_INDEX = re.compile(r"encoder\.layers\.(\d+)\.")


def feature_layer_problems(label: str, layers, num_layers: int, whose: str = "tower's") -> list[str]:
    """Each feature layer (a hidden-state index) that does not exist in ``num_layers`` layers, one line each.

    Args:
        label: the setting that names the layer, e.g. ``vision_feature_layer``.
        layers: one index or a list of them.
        num_layers: the encoder layers the index is counted in.
        whose: whose layers they are, for the message ("tower's", "checkpoint's").
    """
    layers = layers if isinstance(layers, list) else [layers]
    return [
        f"feature layer {layer} ({label}) does not exist in the {whose} {num_layers} layers "
        f"(it reads one of -{num_layers}..{num_layers})"
        for layer in layers
        if not -num_layers <= layer <= num_layers
    ]


def shape_problems(checkpoint_facts: dict[str, int | None], spec: TowerSpec) -> list[str]:
    """``{"hidden size" | "layers" | "patch size" | "image size": the checkpoint's value or None}``
    against the tower's: one line per mismatch."""
    tower_facts = {
        "hidden size": spec.hidden_size,
        "layers": spec.num_layers,
        "patch size": spec.patch_size,
        "image size": spec.image_size,
    }
    return [
        f"{label}: checkpoint {value}, tower {tower_facts[label]}"
        for label, value in checkpoint_facts.items()
        if value is not None and value != tower_facts[label]
    ]


def depth_fit(label: str, layers, kept: int, spec: TowerSpec) -> tuple[list[str], list[str]]:
    """A checkpoint that keeps ``kept`` encoder layers and reads hidden state(s) ``layers`` (its feature
    layer, named ``label``), against the tower: (problems, notes). The checkpoint may keep fewer layers
    than the tower (llava-hf's LLaVA-OneVision keeps 26 of SigLIP so400m's 27): it then runs the tower's
    first ``kept`` layers, whose hidden states are the tower's own, so the layer it reads is the tower's
    layer of the same index (hidden state 0 is the embeddings, i the i-th layer's output).

    Args:
        label: the setting that names the feature layer, e.g. ``vision_feature_layer``.
        layers: the feature layer(s) the checkpoint reads, counted in its own layers.
        kept: the encoder layers the checkpoint keeps.
        spec: the tower's shape.
    """
    tower = spec.num_layers
    if kept > tower:
        return [
            f"layers: the checkpoint keeps {kept}, the tower has {tower}; give a tower of at least {kept} layers "
            "(a checkpoint that keeps fewer runs the tower's first ones)"
        ], []
    layers = layers if isinstance(layers, list) else [layers]
    problems = feature_layer_problems(label, layers, kept, "tower's" if kept == tower else "checkpoint's")
    if problems or kept == tower:
        return problems, []
    reads = ", ".join(f"layer {layer} of {kept} = the tower's {_tower_index(layer, kept, tower)}" for layer in layers)
    return [], [f"layers: the checkpoint keeps {kept} of the tower's {tower}; it reads {reads}"]


def _tower_index(layer: int, kept: int, tower: int) -> int:
    """The checkpoint's hidden-state index ``layer`` as the same hidden state of the full tower, in the same sign."""
    return layer if layer >= 0 else layer - (tower - kept)


def vision_config_problems(vision: dict, feature_layer, spec: TowerSpec) -> tuple[list[str], list[str]]:
    """A llava-hf ``vision_config`` (with its defaults) and ``vision_feature_layer`` against a tower:
    (problems, notes).

    Args:
        vision: the checkpoint's ``vision_config`` completed with its class's defaults.
        feature_layer: the checkpoint's ``vision_feature_layer`` (an index or a list).
        spec: the tower's shape.
    """
    facts = {
        "hidden size": vision["hidden_size"],
        "patch size": vision["patch_size"],
        "image size": vision["image_size"],
    }
    problems, notes = depth_fit("vision_feature_layer", feature_layer, vision["num_hidden_layers"], spec)
    return shape_problems(facts, spec) + problems, notes


def tensor_problems(checkpoint: Checkpoint, tower: Tower) -> list[str]:
    """Every stored tower tensor needs a same-shaped tensor in the new tower (position_ids buffers excepted)."""
    stored = checkpoint.tensors
    missing, differ = [], []
    for key, tower_key in checkpoint.tower_keys().items():
        if tower_key in tower.tensors:
            if tower.tensors[tower_key].shape != stored[key].shape:
                differ.append(
                    f"{tower_key}: checkpoint {list(stored[key].shape)}, tower {list(tower.tensors[tower_key].shape)}"
                )
        elif not key.endswith("position_ids"):
            missing.append(tower_key)
    problems = []
    if missing:
        problems.append(f"the tower lacks {len(missing)} tensor(s) the checkpoint has, e.g. {missing[0]}")
    if differ:
        problems.append(f"{len(differ)} tensor shape(s) differ, e.g. {differ[0]}")
    return problems


def stored_layer_count(keys) -> int | None:
    layers = {int(m.group(1)) for key in keys if (m := LAYER_INDEX.search(key))}
    return max(layers) + 1 if layers else None


def anyres_problems(pinpoints: list, spec: TowerSpec, select: str, drops_first: bool, fix: str) -> list[str]:
    """LLaVA-NeXT-style tiling (anyres) against a tower: every tile is the tower's image size and gives
    exactly its patch grid, which the model reshapes the features into (transformers' LLaVA-NeXT
    ``pack_image_features``, original LLaVA's ``prepare_inputs_labels_for_multimodal``). ``select``:
    the feature-selection setting as the checkpoint names it, ``drops_first`` whether it drops the
    first token, ``fix``: the setting that would fit."""
    side, size = spec.image_size // spec.patch_size, spec.image_size
    if not isinstance(pinpoints, list) or not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in pinpoints):
        return [f"image_grid_pinpoints {pinpoints!r}: expected a list of [height, width] tile grids"]
    problems = []
    features = side * side + (1 if spec.has_cls else 0) - (1 if drops_first else 0)
    if features != side * side:
        problems.append(
            f"{select} leaves {features} features per tile of this {spec.family} tower, not the "
            f"{side}x{side} grid the tiles are reshaped into; it needs {fix!r}"
        )
    off = [p for p in pinpoints if p[0] % size or p[1] % size]
    if off:
        problems.append(f"image_grid_pinpoints {off[0]} is not a whole number of the tower's {size} px tiles")
    return problems


def preset_spec(name: str) -> TowerSpec | None:
    """The shape of the real backbone preset that ``name`` (a preset name or hub id) stands for, if any:
    what an original checkpoint's ``mm_vision_tower`` names, known without downloading it."""
    preset = real_preset(name)
    if not isinstance(preset, Backbone) or preset.family not in FAMILIES:
        return None
    family = FAMILIES[preset.family]
    return TowerSpec(
        family,
        preset.image_size,
        preset.patch_size,
        preset.hidden_size,
        preset.num_layers,
        preset.embed_dim,
        family.mean,
        family.std,
        family.has_cls,
    )


def tower_that_fits(family, image_size: int, patch_size: int, hidden_size: int, layers: int | None) -> str:
    """What a checkpoint needs of a tower, in words, with the real presets that have that shape.

    Args:
        family: the checkpoint's tower family (its name, as ``Backbone.family``).
        image_size: the checkpoint's tower image size.
        patch_size: its patch size.
        hidden_size: its width.
        layers: the encoder layers the checkpoint keeps (a tower may have more), or None where unknown.
    """
    depth = f", at least {layers} layers" if layers else ""
    presets = [
        b.name
        for b in BACKBONES.values()
        if (b.family, b.image_size, b.patch_size, b.hidden_size) == (str(family), image_size, patch_size, hidden_size)
        and (layers is None or b.num_layers >= layers)
    ]
    enhanced = f" (enhance {' or '.join(presets)})" if presets else ""
    return f"it takes a {family} tower of {image_size} px / patch {patch_size}, width {hidden_size}{depth}{enhanced}"
