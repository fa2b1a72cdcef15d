"""The one interface every vision tower family implements.

A tower gives three things to the rest of dcr-mllm: a global embedding (what conditions the
denoiser in DCR), patch features of a chosen layer (what LLaVA consumes), and its own image
normalisation. It also names the vision-encoder modules LoRA may adapt and saves itself in its
family's own format, so the result loads with that family's ``from_pretrained``.
"""

from __future__ import annotations

import shutil
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from dcr_mllm.errors import DcrError


def is_side_file(item: Path) -> bool:
    """Processor, tokenizer and other small files a tower directory carries beside its weights."""
    return (
        item.is_file()
        and not item.name.startswith(".")
        and not item.name.endswith((".safetensors", ".bin", ".pth", ".pt"))
    )


@dataclass(frozen=True, eq=False)
class TowerFamily:
    """Everything the rest of dcr-mllm needs to know about one kind of tower, so that no caller
    branches on a family's name. Each family is defined and registered in its own module
    (``towers/clip.py``, ``towers/siglip.py``, ``towers/openclip.py``); ``towers.registry`` finds them.
    Two families are equal only when they are the same object."""

    name: str
    tower_class: type[VisionTower]
    read_spec: Callable[[Path, TowerFamily], TowerSpec]  # (directory, this family) -> shape facts
    mean: tuple[float, float, float]  # normalisation where the directory's image processor names none
    std: tuple[float, float, float]
    #: the file that marks a directory of this family, and the ``model_type`` it holds there: the full
    #: model's (a text side too) or the vision model's alone; with neither, the file alone decides
    config_file: str = "config.json"
    model_type: str | None = None
    #: also what a LLaVA checkpoint stores as its vision config's; None: LLaVA cannot take the family
    vision_model_type: str | None = None
    #: transformers' class names: the full model, the vision model, the vision model with the
    #: family's projection head (none where the family has no head outside its vision model), and
    #: that one's config class
    full_class: str | None = None
    vision_class: str | None = None
    projection_class: str | None = None
    projection_config_class: str | None = None
    has_cls: bool = True  # a CLS token before the patches, which LLaVA drops (CLIP); SigLIP has none
    pads_text_to_max_length: bool = False  # text padded to full length, attending to it (no mask): SigLIP
    built_whole: bool = False  # ``load_tower`` builds it whole under ZeRO-3 (the engine partitions it)
    #: the transformers image processor the family's published towers ship, at a given image size
    #: (written beside a converted tower that came without one); None where the family has none
    image_processor: Callable[[int], object] | None = None

    def claims(self, model_type: object) -> bool:
        """Whether a directory whose ``config_file`` holds ``model_type`` is of this family."""
        types = {t for t in (self.model_type, self.vision_model_type) if t}
        return not types or model_type in types

    def require_llava(self, tower: object) -> None:
        """LLaVA stores a HF vision model: a family without one is refused, in one line."""
        if self.vision_model_type is None:
            raise DcrError(
                f"{tower}: the {self.name} tower there cannot go into LLaVA, which takes a HF tower directory "
                "(transformers' save_pretrained layout); convert the tower to HF format first"
            )

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"TowerFamily({self.name!r})"


@dataclass(frozen=True)
class TowerSpec:
    """Shape facts about a tower, read from its config files without loading weights."""

    family: TowerFamily
    image_size: int
    patch_size: int
    hidden_size: int
    num_layers: int
    global_dim: int  # width of the global embedding that conditions the denoiser
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    has_cls: bool  # the family's: CLIP-family ViTs carry a CLS token before the patches; SigLIP does not

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


class VisionTower(nn.Module, ABC):
    """One family's model behind the interface every caller uses: loading, the three encoders,
    preprocessing, saving. Subclasses implement each abstract method."""

    #: leaf-module names inside the vision encoder that LoRA adapts by default
    default_lora_targets: tuple[str, ...] = ()

    def __init__(self, model: nn.Module, spec: TowerSpec, source: Path | None):
        super().__init__()
        self.model = model
        self.spec = spec
        self.source = source
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1), persistent=False)

    def normalize(self, images: Tensor) -> Tensor:
        """Pixels in [0, 1] at any size -> this tower's resolution and normalisation."""
        size = self.spec.image_size
        if images.shape[-2:] != (size, size):
            images = F.interpolate(
                images, size=(size, size), mode="bicubic", align_corners=False, antialias=True
            ).clamp(0, 1)
        return (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)

    def use_normalization(self, mean: tuple[float, float, float], std: tuple[float, float, float]) -> None:
        """Normalise with other statistics than the family's (upstream DCR feeds SigLIP OpenAI CLIP's).

        Only ``normalize`` (training) changes; ``preprocess`` and the saved processor keep the family's.
        """
        self.mean.copy_(torch.tensor(mean).view(1, 3, 1, 1))
        self.std.copy_(torch.tensor(std).view(1, 3, 1, 1))

    @classmethod
    @abstractmethod
    def from_pretrained(cls, path: Path, dtype: torch.dtype = torch.float32, vision_only: bool = False) -> VisionTower:
        """Load a tower directory of this family; ``vision_only`` leaves out the text side."""

    #: where the family keeps its parts: the vision side inside a full model (a vision-only load is
    #: that module itself), the transformer blocks inside it, and the projection head on the full
    #: model, if the family has one outside the vision side
    vision_attribute: str
    encoder_attribute: str
    projection_attribute: str | None = None

    @property
    def vision(self) -> nn.Module:
        """The vision side of ``model``, for full and vision-only loads alike."""
        return getattr(self.model, self.vision_attribute, self.model)

    @property
    def vision_encoder(self) -> nn.Module:
        """The transformer blocks that LoRA may adapt (no text tower, no heads)."""
        return getattr(self.vision, self.encoder_attribute)

    @property
    def projection(self) -> nn.Module | None:
        return getattr(self.model, self.projection_attribute, None) if self.projection_attribute else None

    @property
    def vision_parts(self) -> list[nn.Module]:
        """Submodules of ``model`` that the global embedding runs through (encoder, pooling head,
        projection; no text side), in the same order for a vision-only and a full load."""
        return [self.vision] + ([self.projection] if self.projection is not None else [])

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @abstractmethod
    def global_embedding(self, pixels: Tensor) -> Tensor:
        """[B, 3, S, S] normalised pixels -> [B, global_dim]."""

    @abstractmethod
    def patch_features(self, pixels: Tensor, layer: int = -2) -> Tensor:
        """[B, 3, S, S] normalised pixels -> [B, num_patches, hidden] from hidden layer ``layer``.

        Layer indices follow transformers' ``hidden_states``: 0 is the embedding output, -1 the
        last block; the CLS token, where the family has one, is dropped.
        """

    @abstractmethod
    def encode_text(self, texts: list[str]) -> Tensor:
        """[T] strings -> [T, global_dim] text embeddings (full models only; for zero-shot scoring)."""

    @abstractmethod
    def preprocess(self, images: list[Image.Image]) -> Tensor:
        """PIL images -> [B, 3, S, S] pixels, prepared by the family's own evaluation transform.

        Benchmarks feed pixels exactly as the family's processor does (its resize, crop and
        normalisation), so scores compare with published ones; ``normalize`` is for training.
        """

    @property
    @abstractmethod
    def has_text_side(self) -> bool:
        """Whether the text tower was loaded (zero-shot scoring needs it)."""

    def require_text_side(self) -> None:
        if not self.has_text_side:
            raise DcrError(
                f"tower {self.source} was loaded vision-only; text scoring needs the full {self.spec.family} model directory"
            )

    def logit_scale(self) -> float:
        """The trained factor that turns image-text cosine similarities into logits (full models only)."""
        self.require_text_side()
        return self.model.logit_scale.exp().item()

    def logit_bias(self) -> float:
        """What the family adds to every image-text logit: SigLIP's learned bias, 0 for softmax-trained towers."""
        bias = getattr(self.model, "logit_bias", None)
        return bias.item() if bias is not None else 0.0

    @abstractmethod
    def save(self, out_dir: str | Path) -> None:
        """Write the tower in its family's own format (safetensors), with processor files."""

    def copy_side_files(self, out_dir: Path, leave_out: tuple[str, ...] = ()) -> None:
        """Copy the source directory's processor, tokenizer and other small files beside saved weights."""
        if self.source is not None:
            for item in self.source.iterdir():
                if is_side_file(item) and item.name not in leave_out:
                    shutil.copy2(item, out_dir / item.name)
