"""llava-hf LLaVA-NeXT (``LlavaNextForConditionalGeneration``) and LLaVA-OneVision
(``LlavaOnevisionForConditionalGeneration``) checkpoints. Their tower is stored as in LLaVA-1.5
(``llava_hf``); what differs is the image: anyres tiles of the tower's image size, chosen from
``image_grid_pinpoints``, each giving exactly the tower's ``(image_size / patch_size)²`` patch grid
(transformers reshapes it so), followed by the learned ``image_newline``. So the tiling settings of
config and processor stay the checkpoint's (the language model learned that layout) and must agree
with the tower; only the normalisation follows the tower. A tower of the other family is refused:
these checkpoints come with one family (NeXT: CLIP, OneVision: SigLIP) and their token layout too."""

from __future__ import annotations

import json
from pathlib import Path

from dcr_mllm.llava.checkpoints.checkpoint import Checkpoint, Tower, read_json_object
from dcr_mllm.llava.checkpoints.compat import anyres_problems
from dcr_mllm.llava.checkpoints.formats.base import Changes, Fit
from dcr_mllm.llava.checkpoints.formats.llava_hf import PROCESSOR_FILES, LlavaHf
from dcr_mllm.towers import TowerFamily, TowerSpec

#: the image-processor fields that follow the tower; every tiling and resizing field stays the checkpoint's
NORMALISATION = ("image_mean", "image_std")
#: a processor's parts (processor_config.json sections) that preprocess pixels for the tower
PIXEL_SECTIONS = ("image_processor", "video_processor")


def normalisation(tower: Tower) -> dict[str, list[float]]:
    source = tower.image_processor or {"image_mean": list(tower.spec.mean), "image_std": list(tower.spec.std)}
    return {key: list(source[key]) for key in NORMALISATION}


class LlavaNextHf(LlavaHf):
    """``LlavaNextForConditionalGeneration`` checkpoints (CLIP towers, ``vision_feature_select_strategy`` default)."""

    name, model_type, architecture, config_class, label = (
        "llava-next-hf",
        "llava_next",
        "LlavaNextForConditionalGeneration",
        "LlavaNextConfig",
        "LLaVA-NeXT",
    )

    def family_fit(
        self, fit: Fit, config: dict, family: TowerFamily, spec: TowerSpec, allow_family_change: bool
    ) -> None:
        fit.problems.append(
            f"family: a {spec.family} tower into a {family}-based {self.label} checkpoint, whose projector and tile "
            f"layout are {family}'s (--allow-family-change is for LLaVA-1.5 only); give a {family} tower "
            f"(enhance a {family} backbone)"
        )

    def layout_problems(self, config: dict, image_processor: dict | None, spec: TowerSpec) -> list[str]:
        """Each tile must give the tower's exact patch grid, and the tiles must be the tower's image size."""
        strategy = config["vision_feature_select_strategy"]
        if strategy not in ("default", "full"):
            return [f"vision_feature_select_strategy {strategy!r}: use 'default' (drop CLS) or 'full'"]
        processor = image_processor or {}
        pinpoints = (
            config.get("image_grid_pinpoints") or processor.get("image_grid_pinpoints") or []
        )  # saved configs have them
        problems = anyres_problems(
            pinpoints,
            spec,
            f"vision_feature_select_strategy {strategy!r}",
            strategy == "default",
            "default" if spec.has_cls else "full",
        )
        if processor.get("image_grid_pinpoints", pinpoints) != pinpoints:
            problems.append("the image processor's image_grid_pinpoints differ from config.json's; make them the same")
        for field in ("size", "crop_size"):
            value = processor.get(field)
            if isinstance(value, dict) and any(v != spec.image_size for v in value.values()):
                problems.append(
                    f"image processor {field} {value}: the tiles must be the tower's image size {spec.image_size}"
                )
        return problems

    def changes(self, checkpoint: Checkpoint, tower: Tower, dst: Path, family_change: bool) -> Changes:
        changes = super().changes(checkpoint, tower, dst, family_change)
        pinpoints = self.defaults(checkpoint.config).get("image_grid_pinpoints")
        changes.notes.append(
            f"note: tiles kept: image_grid_pinpoints {pinpoints} in {tower.spec.image_size} px tiles; "
            "image_newline, projector and language model copied unchanged"
        )
        return changes

    def image_processor(self, tower: Tower, current):
        return type(current).from_dict({**current.to_dict(), **normalisation(tower)})

    def processor_updates(
        self, checkpoint: Checkpoint, tower: Tower, family_change: bool
    ) -> tuple[dict[str, dict], list[str]]:
        """The normalisation of every pixel processor (images, videos) becomes the tower's; nothing else changes."""
        new = normalisation(tower)
        files, changes = {}, []
        for name in PROCESSOR_FILES:
            path = checkpoint.path / name
            if not path.is_file():
                continue
            data = read_json_object(path)
            sections = [(f"{name} {key}", data[key]) for key in PIXEL_SECTIONS if isinstance(data.get(key), dict)]
            if name == "preprocessor_config.json":
                sections = [(name, data)]
            before = len(changes)
            for label, section in sections:
                for key, value in new.items():
                    if section.get(key) != value:
                        changes.append(f"{label} {key}: {section.get(key)} -> {value}")
                        section[key] = value
            if len(changes) > before:
                files[name] = json.loads(json.dumps(data))
        return files, changes


class LlavaOnevisionHf(LlavaNextHf):
    """``LlavaOnevisionForConditionalGeneration`` checkpoints (SigLIP towers, select strategy ``full``)."""

    name, model_type, architecture, config_class, label = (
        "llava-onevision-hf",
        "llava_onevision",
        "LlavaOnevisionForConditionalGeneration",
        "LlavaOnevisionConfig",
        "LLaVA-OneVision",
    )
