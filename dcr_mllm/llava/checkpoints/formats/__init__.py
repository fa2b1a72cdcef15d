"""The LLaVA checkpoint formats, by name, and reading a checkpoint as the format it is in."""

from __future__ import annotations

from pathlib import Path

from dcr_mllm.errors import DcrError
from dcr_mllm.llava.checkpoints.checkpoint import Checkpoint, read_json_object
from dcr_mllm.llava.checkpoints.formats.base import Changes, CheckpointFormat, Fit
from dcr_mllm.llava.checkpoints.formats.llava_hf import LlavaHf
from dcr_mllm.llava.checkpoints.formats.llava_next import LlavaNextHf, LlavaOnevisionHf
from dcr_mllm.llava.checkpoints.formats.original import OriginalLlava
from dcr_mllm.llava.shards import INDEX_NAME, read_header, weight_files
from dcr_mllm.weights import check_model_dir

FORMATS: dict[str, CheckpointFormat] = {
    kind.name: kind
    for kind in (OriginalLlava(), LlavaHf(), LlavaNextHf(), LlavaOnevisionHf())  # tried in this order
}
#: the llava-hf families, by their config's model_type
LLAVA_HF = {kind.model_type: kind for kind in FORMATS.values() if isinstance(kind, LlavaHf)}


def format_of(checkpoint: Checkpoint) -> CheckpointFormat:
    return FORMATS[checkpoint.format]


def read_checkpoint(path: str | Path, allow_pickle: bool = False) -> Checkpoint:
    """The checkpoint's format, config and safetensors headers, every JSON and safetensors file checked;
    ``allow_pickle`` lets its .bin files be loaded where their tensor names are needed."""
    path = Path(path)
    if not path.is_dir():
        raise DcrError(f"LLaVA checkpoint {path}: no such directory")
    if not (path / "config.json").is_file():
        raise DcrError(f"{path} has no config.json; give a LLaVA checkpoint directory")
    check_model_dir(
        path, allow_pickle=True
    )  # .bin files are copied as they are; loading them is checked where it happens
    config = read_json_object(path / "config.json")
    kind = next((kind for kind in FORMATS.values() if kind.holds(config)), None)
    if kind is None:
        architectures = ", ".join(kind.architecture for kind in LLAVA_HF.values())
        raise DcrError(
            f"{path} is neither a llava-hf checkpoint ({architectures}) nor an original LLaVA one (mm_vision_tower)"
        )
    bins = tuple(sorted(p.name for p in path.glob("*.bin")))
    names = weight_files(path)
    if (
        kind.needs_safetensors and not names and not (allow_pickle and bins)
    ):  # with allow_pickle swap_tower converts them
        raise DcrError(
            f"{path} has no safetensors weights{' (only .bin pickles: pass --allow-pickle to read them with the restricted unpickler)' if bins else ''}; "
            f"or re-save it with {kind.architecture}.from_pretrained(SRC).save_pretrained(DIR) and swap into DIR"
        )
    if not names and not bins:
        raise DcrError(f"{path} has no weight files (*.safetensors or *.bin)")
    shards, metadata = {}, {}
    for name in names:
        shards[name], metadata[name] = read_header(path / name)
    index = read_json_object(path / INDEX_NAME) if (path / INDEX_NAME).is_file() else None
    return Checkpoint(
        path,
        kind.name,
        kind.prefixes,
        config,
        shards,
        metadata,
        index,
        () if kind.needs_safetensors else bins,
        allow_pickle,
    )


__all__ = [
    "FORMATS",
    "LLAVA_HF",
    "Changes",
    "CheckpointFormat",
    "Fit",
    "LlavaHf",
    "LlavaNextHf",
    "LlavaOnevisionHf",
    "OriginalLlava",
    "format_of",
    "read_checkpoint",
]
