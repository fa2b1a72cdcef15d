"""Checks of model directories from their files alone, so a damaged download fails in one line
before any model is built or any output written.

Safetensors headers are read without loading a tensor: the first 8 bytes give the header length,
then JSON gives each tensor's dtype, shape and byte range; the file must be long enough for the
last range. PyTorch pickles (``.bin``, ``.pt``, ``.pth``, ``.ckpt``) are loaded only on request
(``--allow-pickle``, and then with torch's restricted unpickler); otherwise the error says how to
convert them to safetensors.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from dcr_mllm.errors import DcrError
from dcr_mllm.strict import read_json

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
#: headers beyond this are not safetensors (the format caps them at 100 MB)
MAX_HEADER = 100_000_000


def check_safetensors(path: str | Path) -> dict:
    """The header of a safetensors file (tensor name -> dtype/shape/data_offsets), checked against the file's size."""
    path = Path(path)
    bad = f"{path} is not a complete safetensors file"
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise DcrError(f"{bad} ({size} bytes); re-download or re-save it")
            (length,) = struct.unpack("<Q", head)
            if length > min(MAX_HEADER, size - 8):
                raise DcrError(
                    f"{bad} (its header needs {length} bytes, the file has {size}); re-download or re-save it"
                )
            header = json.loads(f.read(length))
    except OSError as err:
        raise DcrError(f"cannot read {path}: {err.strerror or err}") from err
    except (UnicodeDecodeError, ValueError) as err:
        raise DcrError(f"{bad} (its header is not JSON); re-download or re-save it") from err
    if not isinstance(header, dict):
        raise DcrError(f"{bad} (its header is not a JSON object); re-download or re-save it")
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]
            or not isinstance(info.get("dtype"), str)
            or not isinstance(info.get("shape"), list)
        ):
            raise DcrError(f"{bad} (tensor {name!r} has no valid dtype/shape/data_offsets); re-download or re-save it")
        end = max(end, offsets[1])
    if 8 + length + end > size:
        raise DcrError(
            f"{bad}: its tensors need {8 + length + end} bytes, the file has {size} (truncated?); re-download or re-save it"
        )
    return header


def to_safetensors_hint(path: Path) -> str:
    """The command that converts one pickle into the safetensors file transformers looks for beside it."""
    target = path.with_name(path.name.replace("pytorch_model", "model", 1)).with_suffix(".safetensors")
    return (
        'python -c "import sys, torch, safetensors.torch as st; st.save_file({k: v.contiguous().clone() for k, v in '
        "torch.load(sys.argv[1], map_location='cpu', weights_only=True).items()}, sys.argv[2], {'format': 'pt'})\" "
        f"{path} {target}"
    )


def refuse_pickles(pickles: list[Path]) -> None:
    if pickles:
        raise DcrError(
            f"{pickles[0]} is a PyTorch pickle, loaded only with --allow-pickle (restricted unpickler); "
            f"or convert it to safetensors: {to_safetensors_hint(pickles[0])}"
        )


def check_model_dir(directory: str | Path, allow_pickle: bool = False) -> Path:
    """Every JSON and safetensors file under ``directory`` readable and complete; a folder whose
    weights are only pickles refused unless ``allow_pickle`` (pickles beside safetensors are never read)."""
    directory = Path(directory)
    pickles = []
    folders = [
        p
        for p in directory.rglob("*")
        if p.is_dir() and not any(part.startswith(".") for part in p.relative_to(directory).parts)
    ]
    for folder in [directory, *sorted(folders)]:
        files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
        for path in files:
            if path.suffix == ".json":
                read_json(path)
            elif path.suffix == ".safetensors":
                check_safetensors(path)
        if not any(p.suffix == ".safetensors" for p in files):
            pickles += [p for p in files if p.suffix in PICKLE_SUFFIXES]
    if not allow_pickle:
        refuse_pickles(pickles)
    return directory
