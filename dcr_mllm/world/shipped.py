"""The world's base models as shipped inside the package, so a first run need not train them.

``dcr_mllm/world/weights/`` holds ``clip/`` and ``sd/`` as ``build_world_clip`` and ``build_world_sd``
wrote them for the default ``WorldSpec`` (safetensors, configs, the training log), less the
tokenizer files, which are generated on install as a build writes them. ``manifest.json`` records
the recipe each was built from (its ``WorldSpec`` fingerprint and fields, the builder's version,
the package version and commit, torch and the CPU it was trained on) and every file's SHA-256:
``world.models.ensure_world`` installs a model only when its fingerprint is the one asked for, and
``install`` copies it only when every file matches its digest. ``compare`` reports how far a
rebuild (``dcr-mllm build-world --rebuild``) is from the shipped weights: bitwise on the machine
that built them, within float rounding on others.

``world.rebuild`` trains them anew and writes this folder.
"""

from __future__ import annotations

import functools
import hashlib
import json
import platform
import shutil
import tempfile
from pathlib import Path

from dcr_mllm.errors import DcrError

SHIPPED = Path(__file__).parent / "weights"
MANIFEST = "manifest.json"


def _tokenizer_dir(name: str, model_dir: Path) -> Path:
    """Where a model's generated tokenizer files go (the CLIP beside its weights, SD in tokenizer/)."""
    return model_dir / "tokenizer" if name == "sd" else model_dir


def _write_tokenizer(name: str, model_dir: Path) -> None:
    from dcr_mllm.components.tokenizers import clip_tokenizer_files

    clip_tokenizer_files(_tokenizer_dir(name, model_dir))


@functools.cache
def tokenizer_files(name: str) -> frozenset[str]:
    """The paths, relative to the model directory, that ``_write_tokenizer`` writes."""
    with tempfile.TemporaryDirectory() as tmp:
        _write_tokenizer(name, Path(tmp))
        return frozenset(p.relative_to(tmp).as_posix() for p in Path(tmp).rglob("*") if p.is_file())


def digest(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def cpu_model() -> str:
    """This machine's CPU model, as ``lscpu`` names it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def shipped_cpu(source: Path = SHIPPED) -> str:
    return manifest(source).get("built_with", {}).get("cpu", "unknown")


def manifest(source: Path = SHIPPED) -> dict:
    """The manifest of the weights in ``source`` (the package's), or ``{}`` where there is none."""
    try:
        return json.loads((source / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}


def is_shipped(name: str, fingerprint: str, source: Path = SHIPPED) -> bool:
    """Whether ``source`` holds model ``name`` built from the recipe with ``fingerprint``."""
    return manifest(source).get("models", {}).get(name, {}).get("fingerprint") == fingerprint


def install(name: str, out_dir: Path, source: Path = SHIPPED) -> None:
    """Copy shipped model ``name`` into ``out_dir`` (a ``build_once`` temporary), each file checked
    against its digest, then write its tokenizer files."""
    files = manifest(source)["models"][name]["files"]
    for relative, expected in files.items():
        path, target = source / name / relative, out_dir / relative
        if not path.is_file() or digest(path) != expected:
            raise DcrError(
                f"the shipped world model {name} is damaged ({path} is missing or does not match its digest in "
                f"{source / MANIFEST}); reinstall dcr-mllm, or train it with `dcr-mllm build-world --rebuild`"
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    _write_tokenizer(name, out_dir)


def compare(root: Path, source: Path = SHIPPED) -> list[dict]:
    """Per shipped weight file: how far ``root``'s build of it is from the shipped one (tensors
    bitwise equal, the largest absolute difference)."""
    from safetensors.torch import load_file

    rows = []
    for name, entry in manifest(source).get("models", {}).items():
        for relative in entry["files"]:
            if not relative.endswith(".safetensors"):
                continue
            shipped, rebuilt = load_file(source / name / relative), load_file(root / name / relative)
            equal = sum(
                k in rebuilt and rebuilt[k].shape == v.shape and bool((rebuilt[k] == v).all())
                for k, v in shipped.items()
            )
            diffs = [
                (rebuilt[k].double() - v.double()).abs().max().item()
                for k, v in shipped.items()
                if k in rebuilt and rebuilt[k].shape == v.shape and v.numel()
            ]
            rows.append(
                {
                    "model": name,
                    "file": relative,
                    "tensors": len(shipped),
                    "bitwise_equal": equal,
                    "max_abs_diff": max(diffs, default=0.0),
                    "missing": sorted(set(shipped) - set(rebuilt)),
                }
            )
    return rows


def compare_lines(rows: list[dict]) -> list[str]:
    """The comparison as lines for people."""
    lines = []
    for row in rows:
        same = (
            "bitwise identical"
            if row["bitwise_equal"] == row["tensors"]
            else f"{row['bitwise_equal']}/{row['tensors']} tensors bitwise equal, max |diff| {row['max_abs_diff']:.3g}"
        )
        lines.append(
            f"{row['model']}/{row['file']}: {same}"
            + (f"; missing {', '.join(row['missing'])}" if row["missing"] else "")
        )
    return lines
