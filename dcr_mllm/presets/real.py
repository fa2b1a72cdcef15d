"""The paper's real backbones and denoiser, and ``resolve`` that turns a model name into a loadable path.

Each entry names a Hugging Face hub id. Where the hub cannot be reached (clusters are often
offline), download the repository once (``huggingface-cli download <hub_id> --local-dir DIR``)
and pass ``DIR`` wherever a model name is accepted: ``resolve`` returns existing local paths as is.
The ``tiny-*`` names build (once, then reuse) the tiny embedded preset, see ``presets.tiny``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dcr_mllm.errors import DcrError


@dataclass(frozen=True)
class Backbone:
    """A CLIP-family vision tower as published; the sizes let configs be checked before loading."""

    name: str
    hub_id: str
    family: str  # "clip" (HF CLIPModel, incl. MetaCLIP), "siglip" (HF SiglipModel) or "open_clip"
    image_size: int
    patch_size: int
    hidden_size: int  # width of the vision transformer's tokens
    num_layers: int
    embed_dim: int  # width of the global image embedding (CLIP projection; SigLIP pooled output)


@dataclass(frozen=True)
class Denoiser:
    """A latent diffusion model in the diffusers Stable Diffusion layout."""

    name: str
    hub_id: str
    cross_attention_dim: int  # UNet conditioning width the projector must map to
    resolution: int
    latent_channels: int = 4
    vae_downsample: int = 8
    prediction_type: str = "epsilon"


BACKBONES = {
    b.name: b
    for b in (
        Backbone("clip-l14-224", "openai/clip-vit-large-patch14", "clip", 224, 14, 1024, 24, 768),
        Backbone("clip-l14-336", "openai/clip-vit-large-patch14-336", "clip", 336, 14, 1024, 24, 768),
        Backbone("metaclip-l14", "facebook/metaclip-l14-fullcc2.5b", "clip", 224, 14, 1024, 24, 768),
        Backbone("metaclip-h14", "facebook/metaclip-h14-fullcc2.5b", "clip", 224, 14, 1280, 32, 1024),
        Backbone("siglip-so400m-224", "google/siglip-so400m-patch14-224", "siglip", 224, 14, 1152, 27, 1152),
        Backbone("siglip-so400m-384", "google/siglip-so400m-patch14-384", "siglip", 384, 14, 1152, 27, 1152),
    )
}

DENOISERS = {
    d.name: d
    for d in (
        Denoiser(
            "sd21-base", "stabilityai/stable-diffusion-2-1-base", cross_attention_dim=1024, resolution=512
        ),
    )
}

# Preset name -> directory name of the tiny preset (built on first use under the cache root).
TINY_NAMES = {"tiny-clip": "clip", "tiny-siglip": "siglip", "tiny-open-clip": "open_clip", "tiny-sd": "sd", "tiny-llama": "llama"}
# Preset name -> the world's trained base models (``dcr_mllm.world``), also built on first use.
WORLD_NAMES = {"world-clip": "clip", "world-sd": "sd"}


def known_names() -> list[str]:
    return [*BACKBONES, *DENOISERS, *TINY_NAMES, *WORLD_NAMES]


def resolve(name_or_path: str | Path) -> str:
    """Map a preset name, one of its hub ids, or an existing local path to something ``from_pretrained`` loads.

    Real presets resolve to their hub id (a local copy is passed as a path instead); tiny presets
    are built on first use and resolve to their directory.
    """
    name = str(name_or_path)
    real = {**BACKBONES, **DENOISERS}
    if name in real:
        return real[name].hub_id
    if name in {entry.hub_id for entry in real.values()}:
        return name
    if name in TINY_NAMES:
        from dcr_mllm.presets.tiny import ensure_tiny

        return str(ensure_tiny(TINY_NAMES[name]))
    if name in WORLD_NAMES:
        from dcr_mllm.world.models import ensure_world

        return str(ensure_world(WORLD_NAMES[name]))
    path = Path(name).expanduser()
    if path.exists():
        return str(path)
    raise DcrError(
        f"unknown model {name!r}: not a preset name and no such local path; "
        f"use one of {', '.join(known_names())} or the path of a downloaded model directory"
    )


def local_path(name_or_path: str | Path) -> Path:
    """Like ``resolve``, but always a local directory: a hub id is fetched into the hub cache
    (which works offline once cached) or fails with a line saying how to provide it."""
    resolved = resolve(name_or_path)
    path = Path(resolved).expanduser()
    if path.exists():
        return path
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(resolved, allow_patterns=["*.json", "*.txt", "*.model", "*.safetensors", "*/*.json", "*/*.txt", "*/*.safetensors"]))
    except Exception as err:  # offline, gated, or no such repository
        raise DcrError(
            f"{name_or_path} ({resolved}) is not available locally and could not be fetched ({type(err).__name__}); "
            f"download it with `huggingface-cli download {resolved} --local-dir DIR` and pass DIR"
        ) from err
