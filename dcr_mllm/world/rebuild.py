"""``dcr-mllm build-world --rebuild``: the world's base models trained from their recipe, compared
with the shipped weights; and, for maintainers who change the recipe, writing those weights.

    dcr-mllm build-world --rebuild                           # train under $DCR_MLLM_CACHE/world_rebuild, report
    python -m dcr_mllm.world.rebuild --ship                  # the same, then the package's shipped weights from it
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import time
from pathlib import Path

from dcr_mllm.components.build_once import MARKER, is_built
from dcr_mllm.errors import DcrError
from dcr_mllm.io import write_atomic
from dcr_mllm.world.models import BASE_MODELS, VERSION, WorldSpec, build_world, default_world_root
from dcr_mllm.world.shipped import (
    MANIFEST,
    SHIPPED,
    compare,
    compare_lines,
    cpu_model,
    digest,
    shipped_cpu,
    tokenizer_files,
)


def ship(root: Path, spec: WorldSpec | None = None, destination: Path = SHIPPED) -> dict:
    """Copy the complete builds under ``root`` of ``spec`` (the default) into ``destination``, less
    their tokenizer files, and write the manifest; returns it."""
    import torch

    import dcr_mllm

    spec = spec or WorldSpec()
    models = {}
    for name in BASE_MODELS:
        built = root / name
        if not is_built(built, spec.fingerprint(name)):
            raise DcrError(
                f"{built} is not a complete build of the default world spec; run `dcr-mllm build-world --rebuild` first"
            )
        files = sorted(
            p
            for p in built.rglob("*")
            if p.is_file() and p.name != MARKER and p.relative_to(built).as_posix() not in tokenizer_files(name)
        )
        target = destination / name
        shutil.rmtree(target, ignore_errors=True)
        for path in files:
            relative = path.relative_to(built)
            (target / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target / relative)
        models[name] = {
            "fingerprint": spec.fingerprint(name),
            "files": {p.relative_to(built).as_posix(): digest(p) for p in files},
        }
    record = {
        "spec": spec.recipe(),
        "builder_version": VERSION,
        "models": models,
        "built_with": {
            "dcr_mllm": dcr_mllm.__version__,
            "commit": _commit(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "cpu": cpu_model(),
        },
    }
    destination.mkdir(parents=True, exist_ok=True)
    (destination / MANIFEST).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return record


def _commit() -> str:
    """The repository commit the weights were trained at (``git describe``), where there is one."""
    try:
        return subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def rebuild_world(directory: str | Path | None = None) -> list[dict]:
    """Train the default spec's base models under ``directory``, print and write
    (``rebuild_report.json``) how far they are from the shipped weights."""
    root = Path(directory) if directory else default_world_root().with_name("world_rebuild")
    trained = [name for name in BASE_MODELS if not is_built(root / name, WorldSpec().fingerprint(name))]
    start = time.monotonic()
    build_world(root, train=True)
    rows = compare(root)
    report = {"cpu": cpu_model(), "trained": trained, "seconds": round(time.monotonic() - start, 1), "files": rows}
    write_atomic(root / "rebuild_report.json", json.dumps(report, indent=1) + "\n")
    how = (
        f"trained {', '.join(trained)} in {report['seconds']:.0f} s on {report['cpu']}"
        if trained
        else "already trained there"
    )
    print(f"the world's base models under {root} ({how}), against the shipped weights (trained on {shipped_cpu()}):")
    print("\n".join(compare_lines(rows)) or "(this package ships no world weights to compare with)")
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m dcr_mllm.world.rebuild",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--dir", default=None, help="where to train (default $DCR_MLLM_CACHE/world_rebuild)")
    parser.add_argument("--ship", action="store_true", help="then write the package's shipped weights from the rebuild")
    args = parser.parse_args(argv)
    rebuild_world(args.dir)
    if args.ship:
        root = Path(args.dir) if args.dir else default_world_root().with_name("world_rebuild")
        print(json.dumps(ship(root), indent=1))


if __name__ == "__main__":
    main()
