"""Hugging Face towers: CLIP (OpenAI CLIP, MetaCLIP) and SigLIP, full models or vision-only.

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

from dcr_mllm.errors import DcrError
from dcr_mllm.normalization import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, SIGLIP_MEAN, SIGLIP_STD
from dcr_mllm.towers.base import TowerSpec, VisionTower

FAMILY_OF_MODEL_TYPE = {
    "clip": "clip",
    "clip_vision_model": "clip",
    "siglip": "siglip",
    "siglip_vision_model": "siglip",
}
#: files save_pretrained writes itself; everything else in a tower directory is copied as is
WEIGHT_FILES = (
    "config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def read_hf_spec(path: Path) -> TowerSpec:
    config = json.loads((path / "config.json").read_text())
    model_type = config.get("model_type")
    family = FAMILY_OF_MODEL_TYPE.get(model_type)
    if family is None:
        raise DcrError(
            f"{path}/config.json has model_type {model_type!r}; supported towers are CLIP, MetaCLIP, SigLIP (HF) and open_clip"
        )
    vision = config.get("vision_config", config) if model_type in ("clip", "siglip") else config
    architectures = config.get("architectures") or []
    if family == "clip":
        has_projection = model_type == "clip" or "CLIPVisionModelWithProjection" in architectures
        global_dim = (
            config.get("projection_dim", vision.get("projection_dim", 512)) if has_projection else vision["hidden_size"]
        )
        mean, std = OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    else:
        global_dim = vision["hidden_size"]
        mean, std = SIGLIP_MEAN, SIGLIP_STD
    image_size = vision.get("image_size", 224)
    processor_file = path / "preprocessor_config.json"
    if processor_file.is_file():
        processor = json.loads(processor_file.read_text())
        mean = tuple(processor.get("image_mean", mean))
        std = tuple(processor.get("image_std", std))
    return TowerSpec(
        family=family,
        image_size=image_size,
        patch_size=vision.get("patch_size", 32),
        hidden_size=vision["hidden_size"],
        num_layers=vision["num_hidden_layers"],
        global_dim=global_dim,
        mean=mean,
        std=std,
        has_cls=family == "clip",
    )


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
    projection_attribute = "visual_projection"  # CLIP's; SigLIP pools in vision_model.head

    @classmethod
    def from_pretrained(cls, path: Path, dtype: torch.dtype = torch.float32, vision_only: bool = False) -> HFTower:
        """Load the directory's model; ``vision_only`` skips the text tower (training needs none)."""
        import transformers

        spec = read_hf_spec(path)
        config = json.loads((path / "config.json").read_text())
        model_type = config["model_type"]
        if vision_only and model_type == "clip":
            vision_config = transformers.CLIPVisionConfig.from_pretrained(path)
            vision_config.projection_dim = spec.global_dim
            with quiet_transformers():  # it would list every text-tower weight it leaves out
                model = transformers.CLIPVisionModelWithProjection.from_pretrained(
                    path, config=vision_config, dtype=dtype
                )
            return cls(model, spec, path)
        if vision_only and model_type == "siglip":
            model_type = "siglip_vision_model"
        architectures = config.get("architectures") or []
        model_class = {
            "clip": "CLIPModel",
            "siglip": "SiglipModel",
            "clip_vision_model": "CLIPVisionModelWithProjection"
            if "CLIPVisionModelWithProjection" in architectures
            else "CLIPVisionModel",
            "siglip_vision_model": "SiglipVisionModel",
        }[model_type]
        with quiet_transformers():
            model = getattr(transformers, model_class).from_pretrained(path, dtype=dtype)
        return cls(model, spec, path)

    def global_embedding(self, pixels: Tensor) -> Tensor:
        pooled = self.vision(pixel_values=pixels.to(self.dtype)).pooler_output
        return self.projection(pooled) if self.projection is not None else pooled

    def patch_features(self, pixels: Tensor, layer: int = -2) -> Tensor:
        hidden = self.vision(pixel_values=pixels.to(self.dtype), output_hidden_states=True).hidden_states[layer]
        return hidden[:, 1:] if self.spec.has_cls else hidden

    def encode_text(self, texts: list[str]) -> Tensor:
        self.require_text_side()
        if self.spec.family == "siglip":
            # SigLIP was trained on text padded to its full length, attending to the padding (no mask)
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
