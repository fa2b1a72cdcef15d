"""Model presets: the tiny embedded models (the default) and the paper's real backbones and denoiser.

Importing this package is cheap: the tiny builders import torch and friends only when they run.
"""

from dcr_mllm.presets.real import (
    BACKBONES,
    DENOISERS,
    TINY_NAMES,
    Backbone,
    Denoiser,
    known_names,
    resolve,
)
from dcr_mllm.presets.tiny import (
    build_tiny_clip,
    build_tiny_llama,
    build_tiny_open_clip,
    build_tiny_preset,
    build_tiny_sd,
    build_tiny_siglip,
    clip_tokenizer_files,
    default_tiny_root,
    ensure_tiny,
)

__all__ = [
    "BACKBONES",
    "DENOISERS",
    "TINY_NAMES",
    "Backbone",
    "Denoiser",
    "build_tiny_clip",
    "build_tiny_llama",
    "build_tiny_open_clip",
    "build_tiny_preset",
    "build_tiny_sd",
    "build_tiny_siglip",
    "clip_tokenizer_files",
    "default_tiny_root",
    "ensure_tiny",
    "known_names",
    "resolve",
]
