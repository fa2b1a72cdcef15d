"""Hugging Face towers, full models or vision-only: what the HF families (``towers/clip.py``,
``towers/siglip.py``) share. Each family names its transformers classes and conventions; the code
here asks the family, never its name.

The full model (``CLIPModel``/``SiglipModel``) is kept when the directory has one, so the text
side stays available for zero-shot scoring and is saved back unchanged. Only the vision
encoder ever trains.
"""

from __future__ import annotations

import contextlib
import functools
import json
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from dcr_mllm.towers.base import TowerFamily, TowerSpec, VisionTower
from dcr_mllm.towers.registry import family_of_dir

#: files save_pretrained writes itself; everything else in a tower directory is copied as is
WEIGHT_FILES = (
    "config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def has_projection(family: TowerFamily, config: dict) -> bool:
    """Whether a directory's model carries the family's projection head: a full model does, a vision
    model where it was saved with it."""
    full = config.get("model_type") == family.model_type
    return family.projection_class is not None and (
        full or family.projection_class in (config.get("architectures") or [])
    )


def read_hf_spec(path: Path, family: TowerFamily) -> TowerSpec:
    """Shape facts from ``config.json`` (a full model's or its vision model's) and the image processor."""
    config = json.loads((path / "config.json").read_text())
    vision = config.get("vision_config", config) if config.get("model_type") == family.model_type else config
    global_dim = (
        config.get("projection_dim", vision.get("projection_dim", 512))
        if has_projection(family, config)
        else vision["hidden_size"]
    )
    mean, std = family.mean, family.std
    processor_file = path / "preprocessor_config.json"
    if processor_file.is_file():
        processor = json.loads(processor_file.read_text())
        mean = tuple(processor.get("image_mean", mean))
        std = tuple(processor.get("image_std", std))
    return TowerSpec(
        family=family,
        image_size=vision.get("image_size", 224),
        patch_size=vision.get("patch_size", 32),
        hidden_size=vision["hidden_size"],
        num_layers=vision["num_hidden_layers"],
        global_dim=global_dim,
        mean=mean,
        std=std,
        has_cls=family.has_cls,
    )


def model_class_name(family: TowerFamily, config: dict, vision_only: bool) -> str:
    """The transformers class that loads a tower directory.

    Args:
        family: the directory's family, which names its classes.
        config: the directory's ``config.json``.
        vision_only: whether the text side is left out; otherwise a full model loads as one.
    """
    if config["model_type"] == family.model_type and not vision_only:
        return family.full_class
    return family.projection_class if has_projection(family, config) else family.vision_class


@contextlib.contextmanager
def quiet_transformers():
    from transformers.utils import logging as hf_logging

    previous, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)
        if bars:
            hf_logging.enable_progress_bar()


class HFTower(VisionTower):
    default_lora_targets = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
    vision_attribute = "vision_model"
    encoder_attribute = "encoder"
    projection_attribute = "visual_projection"  # CLIP's; SigLIP pools in vision_model.head, and has none

    @classmethod
    def from_pretrained(cls, path: Path, dtype: torch.dtype = torch.float32, vision_only: bool = False) -> HFTower:
        """Load the directory's model; ``vision_only`` skips the text tower (training needs none)."""
        import transformers

        family = family_of_dir(path)
        spec = family.read_spec(path, family)
        config = json.loads((path / "config.json").read_text())
        model_class = getattr(transformers, model_class_name(family, config, vision_only))
        kwargs = {}
        if vision_only and config["model_type"] == family.model_type and family.projection_class:
            # the vision model with its projection, out of a full model's directory
            vision_config = getattr(transformers, family.projection_config_class).from_pretrained(path)
            vision_config.projection_dim = spec.global_dim
            kwargs["config"] = vision_config
        with quiet_transformers():  # it would list every text-tower weight a vision-only load leaves out
            model = model_class.from_pretrained(path, dtype=dtype, **kwargs)
        return cls(model, spec, path)

    def global_embedding(self, pixels: Tensor) -> Tensor:
        pooled = self.vision(pixel_values=pixels.to(self.dtype)).pooler_output
        return self.projection(pooled) if self.projection is not None else pooled

    def patch_features(self, pixels: Tensor, layer: int = -2) -> Tensor:
        hidden = self.vision(pixel_values=pixels.to(self.dtype), output_hidden_states=True).hidden_states[layer]
        return hidden[:, 1:] if self.spec.has_cls else hidden

    def encode_text(self, texts: list[str]) -> Tensor:
        self.require_text_side()
        if self.spec.family.pads_text_to_max_length:
            # e.g. SigLIP, trained on text padded to its full length, attending to the padding (no mask)
            length = self.model.config.text_config.max_position_embeddings
            ids = self._tokenizer(
                texts, padding="max_length", max_length=length, truncation=True, return_tensors="pt"
            ).input_ids
            tokens = {"input_ids": ids.to(self.mean.device)}
        else:
            tokens = self._tokenizer(texts, padding=True, truncation=True, return_tensors="pt").to(self.mean.device)
        features = self.model.get_text_features(**tokens)
        return getattr(features, "pooler_output", features)

    def preprocess(self, images: list[Image.Image]) -> Tensor:
        return self._image_processor(images=images, return_tensors="pt")["pixel_values"]

    @property
    def has_text_side(self) -> bool:
        return hasattr(self.model, "get_text_features")

    @functools.cached_property
    def _tokenizer(self):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.source)

    @functools.cached_property
    def _image_processor(self):
        from transformers import AutoImageProcessor

        return AutoImageProcessor.from_pretrained(self.source)

    def save(self, out_dir: str | Path) -> None:
        out_dir = Path(out_dir)
        self.model.save_pretrained(out_dir, safe_serialization=True)
        self.copy_side_files(out_dir, leave_out=WEIGHT_FILES)
