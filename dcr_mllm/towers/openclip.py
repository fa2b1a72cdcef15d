"""open_clip towers, read from and written to open_clip's ``local-dir:`` layout.

The layout is ``open_clip_config.json`` (``model_cfg`` + ``preprocess_cfg``) beside
``open_clip_model.safetensors``; ``open_clip.create_model_and_transforms("local-dir:DIR")``
loads it. Only ViT towers are supported: LoRA and patch features need transformer blocks.
LLaVA cannot take these towers (it stores a HF vision model); ZeRO-3 builds them whole.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import save_file
from torch import Tensor

from dcr_mllm.errors import DcrError
from dcr_mllm.normalization import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from dcr_mllm.towers.base import TowerFamily, TowerSpec, VisionTower
from dcr_mllm.towers.registry import family_of_dir, register_family

CONFIG_NAME = "open_clip_config.json"
WEIGHTS_NAME = "open_clip_model.safetensors"


def read_open_clip_spec(path: Path, family: TowerFamily) -> TowerSpec:
    config = json.loads((path / CONFIG_NAME).read_text())
    model_cfg = config.get("model_cfg", config)
    vision = model_cfg.get("vision_cfg", {})
    if "timm_model_name" in vision or isinstance(vision.get("layers"), (list, tuple)):
        raise DcrError(
            f"{path} holds a non-ViT open_clip tower (timm or ResNet); dcr-mllm supports open_clip ViT towers"
        )
    preprocess = config.get("preprocess_cfg", {})
    image_size = vision.get("image_size", 224)
    image_size = image_size[0] if isinstance(image_size, (list, tuple)) else image_size
    patch_size = vision.get("patch_size", 16)
    patch_size = patch_size[0] if isinstance(patch_size, (list, tuple)) else patch_size
    return TowerSpec(
        family=family,
        image_size=image_size,
        patch_size=patch_size,
        hidden_size=vision.get("width", 768),
        num_layers=vision.get("layers", 12),
        global_dim=model_cfg["embed_dim"],
        mean=tuple(preprocess.get("mean", family.mean)),
        std=tuple(preprocess.get("std", family.std)),
        has_cls=family.has_cls,
    )


class OpenClipTower(VisionTower):
    # open_clip's attention is a fused nn.MultiheadAttention that LoRA cannot reach; the MLP can
    default_lora_targets = ("c_fc", "c_proj")
    vision_attribute = "visual"
    encoder_attribute = "transformer"

    @classmethod
    def from_pretrained(
        cls, path: Path, dtype: torch.dtype = torch.float32, vision_only: bool = False
    ) -> OpenClipTower:
        """Load the directory's model; ``vision_only`` keeps just ``model.visual``."""
        import open_clip

        family = family_of_dir(path)
        spec = family.read_spec(path, family)
        model = open_clip.create_model("local-dir:" + str(path), device="cpu")
        return cls((model.visual if vision_only else model).to(dtype), spec, path)

    def global_embedding(self, pixels: Tensor) -> Tensor:
        return self.vision(pixels.to(self.dtype))

    def patch_features(self, pixels: Tensor, layer: int = -2) -> Tensor:
        # hidden_states[k] (HF convention) is the output of block k-1; 0 is the embeddings
        index = layer if layer >= 0 else self.spec.num_layers + 1 + layer
        if index == 0:
            raise DcrError("open_clip towers give patch features from block outputs; choose a layer other than 0")
        out = self.vision.forward_intermediates(
            pixels.to(self.dtype), indices=[index - 1], intermediates_only=True, output_fmt="NLC"
        )
        return out["image_intermediates"][0]

    def encode_text(self, texts: list[str]) -> Tensor:
        self.require_text_side()
        return self.model.encode_text(self._tokenizer(texts).to(self.mean.device))

    def preprocess(self, images: list[Image.Image]) -> Tensor:
        return torch.stack([self._eval_transform(image) for image in images])

    @property
    def has_text_side(self) -> bool:
        return self.model is not self.vision

    @functools.cached_property
    def _tokenizer(self):
        import open_clip

        return open_clip.get_tokenizer("local-dir:" + str(self.source))

    @functools.cached_property
    def _eval_transform(self):
        """open_clip's own evaluation transform, from the preprocess config the model was built with."""
        from open_clip.transform import PreprocessCfg, image_transform_v2

        return image_transform_v2(PreprocessCfg(**self.vision.preprocess_cfg), is_train=False)

    def save(self, out_dir: str | Path) -> None:
        if not self.has_text_side:
            raise DcrError("a vision-only open_clip tower cannot be saved in the local-dir layout; load it in full")
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        state = {k: v.contiguous() for k, v in self.model.state_dict().items()}
        save_file(state, out_dir / WEIGHTS_NAME)
        self.copy_side_files(out_dir)


OPEN_CLIP = TowerFamily(
    name="open_clip",
    tower_class=OpenClipTower,
    read_spec=read_open_clip_spec,
    mean=OPENAI_CLIP_MEAN,
    std=OPENAI_CLIP_STD,
    config_file=CONFIG_NAME,
    built_whole=True,
)
register_family(OPEN_CLIP)
