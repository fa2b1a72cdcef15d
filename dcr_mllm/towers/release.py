"""``convert-tower --preset NAME``: a released enhanced tower (``presets/released.py``), fetched from
the hub or taken from where it was placed by hand, checked against its published digest and its
base's architecture, and written as an HF tower that every command takes.

State-dict releases (DIVA) go through ``convert_tower`` with the architecture the preset names, so
the source's forward is checked as for any convert. Releases already in transformers' format
(GenHancer, DCR) keep their text side (MMVP-VLM and zero-shot read it); they are re-saved as
safetensors with the image processor their base ships, and the saved tower's forward is checked
against the loaded one.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch

from dcr_mllm.errors import DcrError
from dcr_mllm.io import atomic_dir, write_atomic
from dcr_mllm.presets.real import file_digest, short_reason
from dcr_mllm.presets.released import RECORD, ReleasedTower, released_tower
from dcr_mllm.towers import inspect_tower, load_tower
from dcr_mllm.towers.convert import (
    ConvertReport,
    convert_tower,
    describe,
    relative,
    require_close,
)
from dcr_mllm.towers.convert_text import TOKENIZER_FILES, check_tokenizer, copy_tokenizer


def download_hint(preset: ReleasedTower) -> str:
    """How to get the preset's file onto this machine, and the command that takes it from there."""
    if not preset.on_hub:
        return (
            f"download the folder {preset.location} by hand (a browser, or gdown) as D, "
            f"then `dcr-mllm convert-tower --preset {preset.name} D --output DIR`"
        )
    at = f" --revision {preset.revision}" if preset.revision else ""
    what = preset.path if preset.format != "hf" else f"--include '{preset.path}/*'"
    return (
        f"download it where the hub is reachable (`hf download {preset.location} {what}{at} --local-dir D`), "
        f"then `dcr-mllm convert-tower --preset {preset.name} D/{preset.path} --output DIR`"
    )


def fetch(preset: ReleasedTower) -> Path:
    """The preset's file (or folder) from the hub cache, downloading it there when the hub is reachable."""
    if not preset.on_hub:
        raise DcrError(f"{preset.name} is on a file share no client here can fetch; {download_hint(preset)}")
    from huggingface_hub import hf_hub_download, snapshot_download

    try:
        if preset.format == "hf":
            root = snapshot_download(preset.location, revision=preset.revision, allow_patterns=[f"{preset.path}/*"])
            return Path(root) / preset.path
        return Path(hf_hub_download(preset.location, preset.path, revision=preset.revision))
    except Exception as err:  # offline, gone, or no such revision
        raise DcrError(
            f"{preset.name} cannot be fetched from {preset.location} ({type(err).__name__}: {short_reason(err)}); "
            + download_hint(preset)
        ) from err


def check_digest(preset: ReleasedTower, path: Path) -> str:
    """Refuse a file that is not the published one; the report line saying what was checked."""
    if preset.digest is None:
        return (
            f"{preset.name}: no digest is published, so the file is unverified; "
            f"`dcr-mllm presets --digest FILE` prints one to compare with a trusted copy"
        )
    size = path.stat().st_size
    if size != preset.digest.size:
        raise DcrError(
            f"{path} has {size} bytes, {preset.name}'s published file {preset.digest.size} "
            f"({preset.digest.source}); download it again ({download_hint(preset)})"
        )
    found = file_digest(path)
    if found != preset.digest.sha256:
        raise DcrError(
            f"{path} has SHA-256 {found}, {preset.name}'s published file {preset.digest.sha256} "
            f"({preset.digest.source}); download it again"
        )
    return f"{preset.name}: size and SHA-256 are the published file's ({preset.digest.source})"


def check_base(preset: ReleasedTower, path: Path, allow_pickle: bool) -> None:
    """Refuse a folder whose tower is not the architecture of the preset's base."""
    base = preset.base_backbone
    spec = inspect_tower(path, allow_pickle)
    found = (spec.family.name, spec.image_size, spec.patch_size, spec.hidden_size, spec.num_layers)
    expected = (base.family, base.image_size, base.patch_size, base.hidden_size, base.num_layers)
    if found != expected:
        shape = "{} at {} px, patch {}, width {}, {} layers"
        raise DcrError(
            f"{path} holds a {shape.format(*found)} tower; {preset.name} is tuned from {base.name} "
            f"({shape.format(*expected)}): give {preset.name}'s folder"
        )


@torch.no_grad()
def compare_towers(source, saved, image_size: int) -> dict[str, float]:
    """Max relative differences of two HF towers' image embeddings and layer -2 hidden states."""
    pixels = torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    hidden = [t.vision(pixel_values=pixels, output_hidden_states=True).hidden_states[-2] for t in (source, saved)]
    return {
        "embedding": relative(saved.global_embedding(pixels), source.global_embedding(pixels)),
        "layer -2": relative(hidden[1], hidden[0]),
    }


def resave_hf(
    preset: ReleasedTower, src: Path, output: Path, allow_pickle: bool, tokenizer: str | Path | None = None
) -> ConvertReport:
    """A transformers-format release, re-saved as safetensors with its base's image processor (and,
    where it has no tokenizer, the files of ``tokenizer``, the base's)."""
    check_base(preset, src, allow_pickle)
    has_tokenizer = any((src / name).is_file() for name in TOKENIZER_FILES)
    if tokenizer is not None and not has_tokenizer:
        vocab = json.loads((src / "config.json").read_text())["text_config"]["vocab_size"]
        check_tokenizer(tokenizer, vocab, eos_last=False)  # transformers' own pooling: the vocabulary is enough
    source = load_tower(src, allow_pickle=allow_pickle).eval()
    notes = []
    if not has_tokenizer and tokenizer is None:
        notes.append(
            f"{src} has no tokenizer: the text side (zero-shot, MMVP-VLM) needs {preset.base}'s; "
            "convert again with --tokenizer BASE_DIR"
        )
    with atomic_dir(output) as tmp:
        source.save(tmp)
        if not has_tokenizer and tokenizer is not None:
            copy_tokenizer(tokenizer, tmp)
            notes.append(f"tokenizer: {tokenizer}'s, the folder has none")
        if not (tmp / "preprocessor_config.json").is_file():
            source.spec.family.image_processor(source.spec.image_size).save_pretrained(tmp)
            notes.append(f"image processor: {preset.base}'s ({source.spec.image_size} px), the folder has none")
        saved = load_tower(tmp).eval()
        differences = require_close(compare_towers(source, saved, source.spec.image_size))
    config = source.model.config.vision_config
    return ConvertReport(
        src, "hf", type(source.model).__name__, describe(config), -1, differences, output, tuple(notes)
    )


def convert_release(
    name: str,
    src: str | Path | None,
    output: str | Path,
    *,
    tokenizer: str | Path | None = None,
    allow_pickle: bool = False,
    force: bool = False,
) -> ConvertReport:
    """Convert the released tower ``name`` (a preset of presets/released.py) to an HF tower.

    Args:
        name: the preset, e.g. ``diva-clip-l14-224``.
        src: its downloaded file or folder; None fetches it from the hub (DIVA, GenHancer).
        output: the HF tower directory to write (refused if it exists, unless ``force``).
        tokenizer: the base's tokenizer folder: a state dict keeps its text side; a folder without a
            tokenizer gets its files.
        allow_pickle: load the release's pickled weights with ``torch.load(weights_only=True)``.
        force: replace an existing ``output`` once the new one is written and verified.
    """
    preset = released_tower(name)
    output = Path(output)
    if output.exists() and not force:
        raise DcrError(f"{output} exists; choose another --output or pass --force to replace it")
    path = Path(src) if src is not None else fetch(preset)
    if not path.exists():
        raise DcrError(f"{path}: no such file or folder; {download_hint(preset)}")
    if preset.format == "hf":
        if not path.is_dir():
            raise DcrError(f"{path} is not a folder; {preset.name} is a save_pretrained folder (config.json + weights)")
        checked = check_digest(preset, path)  # none is published for a folder: says so
        report = resave_hf(preset, path, output, allow_pickle, tokenizer)
    else:
        if not path.is_file():
            raise DcrError(f"{path} is not a file; {preset.name} is one state-dict file ({Path(preset.path).name})")
        checked = check_digest(preset, path)  # before reading a byte of it as weights
        report = convert_tower(
            path, output, model=preset.open_clip_model, tokenizer=tokenizer, allow_pickle=allow_pickle, force=force
        )
    record = {"preset": preset.name, "method": preset.method, "base": preset.base, "source": str(path)}
    write_atomic(output / RECORD, json.dumps(record, indent=1) + "\n")  # eval-tower puts the reported score beside
    reported = f"reported MMVP-VLM: {preset.mmvp_vlm} (base {preset.mmvp_vlm_base}), {preset.reported}"
    return replace(report, notes=(*report.notes, checked, reported))


__all__ = ["convert_release", "fetch"]
