"""``build_once``: a model directory built at most once, whoever asks for it and however often."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from dcr_mllm.io import atomic_dir

MARKER = ".complete"


def is_built(target: Path, fingerprint: str) -> bool:
    """Whether ``target`` holds a complete build of ``fingerprint`` (its marker says so)."""
    marker = Path(target) / MARKER
    return marker.is_file() and marker.read_text() == fingerprint


def build_once(target: str | Path, fingerprint: str, builder: Callable[[Path], object]) -> Path:
    """``target``, built by ``builder(tmp)`` first unless a complete build of ``fingerprint`` is there.

    The build fills a temporary sibling that becomes ``target`` only once its marker is written
    (``io.atomic_dir``), so an interrupted build never looks complete and a stale one (another
    fingerprint) is replaced only by a finished one; a file lock lets concurrent processes and
    ranks share one build.

    Args:
        target: the model directory to return, built there if absent or stale.
        fingerprint: what the build is of; the marker holds it, and a different one means rebuild.
        builder: fills the temporary directory it is given with the build (its return value is ignored).
    """
    from filelock import FileLock

    target = Path(target)
    if is_built(target, fingerprint):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target.parent / f".{target.name}.lock")):
        if not is_built(target, fingerprint):
            with atomic_dir(target) as tmp:
                builder(tmp)
                (tmp / MARKER).write_text(fingerprint)
    return target
