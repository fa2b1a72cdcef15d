"""``dcr-mllm presets``: every preset with its source, size, purpose, and whether it is on this machine.

"On this machine" is read without downloading or building anything: the hub cache
(``huggingface_hub.try_to_load_from_cache`` at the pinned revision) for the real presets, the
build markers for the tiny and world ones.
"""

from __future__ import annotations

from pathlib import Path

from dcr_mllm.presets.real import (
    BACKBONES,
    CHECKED_FILES,
    DENOISERS,
    TINY_NAMES,
    WORLD_NAMES,
    Backbone,
    Denoiser,
    file_digest,
)
from dcr_mllm.presets.released import FORMATS, RELEASED

TINY_PURPOSE = {
    "tiny-clip": "tests and the CPU pipeline (CLIP tower)",
    "tiny-siglip": "tests (SigLIP tower)",
    "tiny-open-clip": "tests (open_clip tower)",
    "tiny-sd": "tests and the CPU pipeline (denoiser)",
    "tiny-llama": "tests and the CPU pipeline (LLaVA language model)",
}
WORLD_PURPOSE = {
    "world-clip": "the tiny world's base tower (trained here or shipped)",
    "world-sd": "the tiny world's denoiser (trained here or shipped)",
}
HEADER = ("name", "hub id", "revision", "size", "for", "on this machine")
RELEASED_HEADER = ("name", "method", "base", "source", "format", "digest", "reported MMVP-VLM")


def _cached(repo: str, revision: str | None, files: tuple[str, ...]) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return all(isinstance(try_to_load_from_cache(repo, f, revision=revision or "main"), str) for f in files)


def _real_row(preset: Backbone | Denoiser) -> tuple[str, ...]:
    if isinstance(preset, Backbone):
        size = f"{preset.vision_params / 1e6:.1f}M vision params"
        purpose = f"vision tower ({preset.family}, {preset.image_size}px)"
        files: tuple[str, ...] = ("config.json",)
    else:
        size = " + ".join(f"{name.split('/')[0]} {d.size / 1e9:.2f} GB" for name, d in preset.digests.items())
        purpose = "DCR's denoiser" + (" (unofficial community mirror)" if preset.original_id else "")
        files = ("model_index.json", *CHECKED_FILES)
    cached = "yes (hub cache)" if _cached(preset.hub_id, preset.revision, files) else "no"
    return preset.name, preset.hub_id, preset.revision[:12] if preset.revision else "unpinned", size, purpose, cached


def _built_row(name: str, target: Path, fingerprint: str, purpose: str) -> tuple[str, ...]:
    from dcr_mllm.components.build_once import is_built

    built = is_built(target, fingerprint)
    size = f"{sum(f.stat().st_size for f in target.rglob('*') if f.is_file()) / 1e6:.1f} MB" if built else "-"
    return name, "-", "-", size, purpose, f"yes ({target})" if built else "no (built on first use)"


def preset_rows() -> list[tuple[str, ...]]:
    from dcr_mllm.presets.tiny import PRESET_VERSION, default_tiny_root
    from dcr_mllm.world.models import WorldSpec, default_world_root

    rows = [_real_row(preset) for preset in (*BACKBONES.values(), *DENOISERS.values())]
    rows += [
        _built_row(name, default_tiny_root() / d, PRESET_VERSION, TINY_PURPOSE[name]) for name, d in TINY_NAMES.items()
    ]
    rows += [
        _built_row(name, default_world_root() / d, WorldSpec().fingerprint(d), WORLD_PURPOSE[name])
        for name, d in WORLD_NAMES.items()
    ]
    return rows


def released_rows() -> list[tuple[str, ...]]:
    """The released enhanced towers: where each is, its format and route, and what its paper reports."""
    rows = []
    for tower in RELEASED.values():
        if tower.on_hub:
            source = f"{tower.location}: {tower.path}" + (f" @ {tower.revision[:12]}" if tower.revision else "")
        else:
            source = f"{tower.location} (by hand)"
        digest = (
            f"sha256 {tower.digest.sha256[:12]}, {tower.digest.size / 1e9:.2f} GB" if tower.digest else "none published"
        )
        reported = f"{tower.mmvp_vlm} (base {tower.mmvp_vlm_base})"
        rows.append((tower.name, tower.method, tower.base, source, FORMATS[tower.format], digest, reported))
    return rows


def _markdown(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(row) + " |" for row in [header, *rows]]
    lines.insert(1, "|" + "---|" * len(header))
    return "\n".join(lines) + "\n"


def presets_table() -> str:
    """The presets as a Markdown table, then the released enhanced towers as another."""
    return (
        _markdown(HEADER, preset_rows())
        + "\nReleased enhanced towers (`dcr-mllm convert-tower --preset NAME [PATH] --output DIR` makes each an HF tower):\n\n"
        + _markdown(RELEASED_HEADER, released_rows())
    )


def digest_line(path: str | Path) -> str:
    """``<sha256>  <size>  <path>``: what to record in a preset's ``digests``."""
    return f"{file_digest(path)}  {Path(path).stat().st_size}  {path}"
