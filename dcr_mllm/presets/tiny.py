"""The tiny embedded preset: random-init tiny models, saved in each family's own on-disk format.

Every model is built from a config under a fixed seed and written exactly as its library writes
a real checkpoint (``save_pretrained`` / open_clip's ``save_for_hf`` / a diffusers pipeline), so
the rest of dcr-mllm loads a tiny directory through the very code path it uses for real weights.
Nothing here touches the network.

Layout under a root (``build_tiny_preset``):

    clip/       transformers CLIPModel + CLIPImageProcessor + CLIP tokenizer
    siglip/     transformers SiglipModel + SiglipImageProcessor + SiglipTokenizer (spiece.model)
    open_clip/  open_clip ``local-dir:`` layout (open_clip_config.json + open_clip_model.safetensors)
    sd/         a StableDiffusionPipeline directory (unet/, vae/, scheduler/, text_encoder/, tokenizer/)

Heavy libraries are imported inside the builders so that importing the presets (to resolve a
real backbone name, or for ``--help``) stays instant.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from dcr_mllm.components.build_once import build_once
from dcr_mllm.components.tokenizers import (
    CLIP_CONTEXT_LENGTH,
    CLIP_VOCAB_SIZE,
    SIGLIP_CONTEXT_LENGTH,
    clip_tokenizer,
    clip_tokenizer_files,
    llama_tokenizer,
    siglip_spiece_model,
)
from dcr_mllm.errors import DcrError
from dcr_mllm.normalization import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, SIGLIP_MEAN, SIGLIP_STD

SEED = 0
# Bumped whenever a tiny config changes, so that a stale cached build is rebuilt.
PRESET_VERSION = "2"

IMAGE_SIZE = 32
PATCH_SIZE = 8
WIDTH = 32
VISION_LAYERS = 3  # >= 3 so that the usual "feature layer -2" is a middle layer
HEADS = 2
MLP_WIDTH = 64
EMBED_DIM = 16


PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
#: the vision tower of the tiny CLIP and SigLIP
VISION_CONFIG = {
    "image_size": IMAGE_SIZE,
    "patch_size": PATCH_SIZE,
    "hidden_size": WIDTH,
    "intermediate_size": MLP_WIDTH,
    "num_hidden_layers": VISION_LAYERS,
    "num_attention_heads": HEADS,
}


def default_tiny_root() -> Path:
    """Where the tiny preset is cached: ``$DCR_MLLM_CACHE/tiny`` or ``~/.cache/dcr_mllm/tiny``."""
    cache = os.environ.get("DCR_MLLM_CACHE") or Path.home() / ".cache" / "dcr_mllm"
    return Path(cache).expanduser() / "tiny"


def _seeded(build):
    """Run ``build()`` under the preset seed without disturbing the caller's RNG state."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        return build()


def build_tiny_clip(out_dir: str | Path) -> Path:
    """A tiny transformers CLIPModel, loadable as CLIPModel / CLIPVisionModel(WithProjection) / CLIPProcessor."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    out_dir = Path(out_dir)
    # projection_dim goes into each sub-config too: CLIPVisionModelWithProjection reads the
    # vision config's own value (default 512), not the top-level one.
    config = CLIPConfig(
        text_config={
            "vocab_size": CLIP_VOCAB_SIZE,
            "max_position_embeddings": CLIP_CONTEXT_LENGTH,
            "hidden_size": WIDTH,
            "intermediate_size": MLP_WIDTH,
            "num_hidden_layers": 2,
            "num_attention_heads": HEADS,
            "projection_dim": EMBED_DIM,
        },
        vision_config={**VISION_CONFIG, "projection_dim": EMBED_DIM},
        projection_dim=EMBED_DIM,
    )
    _seeded(lambda: CLIPModel(config)).save_pretrained(out_dir, safe_serialization=True)
    CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_mean=list(OPENAI_CLIP_MEAN),
        image_std=list(OPENAI_CLIP_STD),
    ).save_pretrained(out_dir)
    clip_tokenizer_files(out_dir)
    return out_dir


def build_tiny_siglip(out_dir: str | Path) -> Path:
    """A tiny transformers SiglipModel with SigLIP's image processor (mean/std 0.5) and a tiny spiece tokenizer."""
    from transformers import (
        SiglipConfig,
        SiglipImageProcessor,
        SiglipModel,
        SiglipTokenizer,
    )

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    spiece = out_dir / "spiece.model"
    spiece.write_bytes(siglip_spiece_model())
    tokenizer = SiglipTokenizer(str(spiece), model_max_length=SIGLIP_CONTEXT_LENGTH)
    config = SiglipConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "max_position_embeddings": SIGLIP_CONTEXT_LENGTH,
            "hidden_size": WIDTH,
            "intermediate_size": MLP_WIDTH,
            "num_hidden_layers": 2,
            "num_attention_heads": HEADS,
            "pad_token_id": tokenizer.pad_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "bos_token_id": None,
        },
        vision_config=VISION_CONFIG,
    )
    _seeded(lambda: SiglipModel(config)).save_pretrained(out_dir, safe_serialization=True)
    SiglipImageProcessor(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        image_mean=list(SIGLIP_MEAN),
        image_std=list(SIGLIP_STD),
    ).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


OPEN_CLIP_CONFIG = {
    "embed_dim": EMBED_DIM,
    "vision_cfg": {
        "image_size": IMAGE_SIZE,
        "patch_size": PATCH_SIZE,
        "width": WIDTH,
        "layers": VISION_LAYERS,
        "head_width": WIDTH // HEADS,
        "mlp_ratio": MLP_WIDTH / WIDTH,
    },
    "text_cfg": {
        "context_length": CLIP_CONTEXT_LENGTH,
        "vocab_size": CLIP_VOCAB_SIZE,
        "width": WIDTH,
        "heads": HEADS,
        "layers": 2,
        "mlp_ratio": MLP_WIDTH / WIDTH,
    },
}


def build_tiny_open_clip(out_dir: str | Path) -> Path:
    """A tiny open_clip ViT in the ``local-dir:`` layout, written by open_clip's own ``save_for_hf``.

    The model is created by open_clip's factory from a temporary config-only directory (it logs
    that no weights were found, which is the point: random init), so its preprocessing config is
    the one open_clip derives. No ``hf_tokenizer_name`` is set, so ``get_tokenizer`` returns the
    offline SimpleTokenizer; the HF tokenizer files beside it mirror what open_clip pushes to the hub.
    """
    import open_clip
    from open_clip.push_to_hf_hub import save_for_hf

    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory() as config_dir:
        config_only = {"model_cfg": OPEN_CLIP_CONFIG, "preprocess_cfg": {}}
        (Path(config_dir) / "open_clip_config.json").write_text(json.dumps(config_only))
        model = _seeded(lambda: open_clip.create_model(f"local-dir:{config_dir}"))
    save_for_hf(model, clip_tokenizer(), OPEN_CLIP_CONFIG, out_dir, safe_serialization=True)
    clip_tokenizer_files(out_dir)
    return out_dir


def build_tiny_sd(out_dir: str | Path, prediction_type: str = "epsilon") -> Path:
    """A tiny Stable-Diffusion-2-style pipeline directory; a 32x32 image maps to an 8x8x4 latent.

    Written by ``StableDiffusionPipeline.save_pretrained`` so that both the pipeline and each
    component (``from_pretrained(dir, subfolder=...)``) load from it.
    """
    if prediction_type not in PREDICTION_TYPES:
        raise DcrError(f"unknown prediction_type {prediction_type!r}; use one of {', '.join(PREDICTION_TYPES)}")
    from dcr_mllm.components.diffusion import clip_text_encoder, save_sd_pipeline, sd_scheduler, sd_unet, sd_vae

    def build_models():
        return (
            sd_unet(IMAGE_SIZE, (32, 64), cross_attention_dim=WIDTH),
            sd_vae(IMAGE_SIZE),
            clip_text_encoder(WIDTH, MLP_WIDTH, HEADS),
        )

    unet, vae, text_encoder = _seeded(build_models)
    save_sd_pipeline(Path(out_dir), vae, text_encoder, unet, sd_scheduler(prediction_type))
    return out_dir


def build_tiny_llama(out_dir: str | Path) -> Path:
    """A tiny Llama causal LM with a byte-level BPE tokenizer trained here (no hub tokenizer needed).

    The tokenizer behaves like Llama's where it matters: ``<s>`` is prepended, ``</s>`` is the
    end of a turn, and byte-level BPE can encode any text.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    tokenizer = llama_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    model = _seeded(lambda: LlamaForCausalLM(config))
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir


TINY_BUILDERS = {
    "clip": build_tiny_clip,
    "siglip": build_tiny_siglip,
    "open_clip": build_tiny_open_clip,
    "sd": build_tiny_sd,
    "llama": build_tiny_llama,
}


def ensure_tiny(name: str, root: str | Path | None = None) -> Path:
    """Return ``root/name``, building it first unless a complete build of this version is there
    (``build_once``: atomic, and shared by concurrent ranks)."""
    if name not in TINY_BUILDERS:
        raise DcrError(f"unknown tiny model {name!r}; use one of {', '.join(TINY_BUILDERS)}")
    root = Path(root) if root is not None else default_tiny_root()
    return build_once(root / name, PRESET_VERSION, TINY_BUILDERS[name])


def build_tiny_preset(root: str | Path | None = None) -> dict[str, Path]:
    """Build (or reuse) every tiny model under ``root``; returns ``{"clip": root/"clip", ...}``."""
    return {name: ensure_tiny(name, root) for name in TINY_BUILDERS}
