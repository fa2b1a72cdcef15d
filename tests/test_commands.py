"""Commands the shipped files tell users to run exist in the pinned stack: huggingface_hub 1.x and later
ship only ``hf`` (``huggingface-cli`` is gone), so no package module, page or stage script names the old one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the environment's console scripts
SHIPPED = [
    REPO / "README.md",
    *sorted((REPO / "dcr_mllm").rglob("*.py")),
    *sorted((REPO / "dcr_mllm").rglob("*.yaml")),
    *sorted((REPO / "docs").rglob("*.md")),
    *sorted(p for p in (REPO / "stages").rglob("*") if p.is_file() and p.suffix in (".sh", ".yaml", ".json", ".md")),
    *sorted((REPO / "eval_tasks").rglob("*.py")),
    *sorted((REPO / "eval_tasks").rglob("*.yaml")),
]
#: console scripts earlier versions of the stack shipped, and the one that replaced each
GONE = {"huggingface-cli": "hf"}


def test_the_download_command_the_files_name_exists_with_its_flags():
    assert (BIN / "hf").is_file()
    out = subprocess.run([BIN / "hf", "download", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and all(flag in out.stdout for flag in ("--revision", "--local-dir")), out.stderr


def test_no_shipped_file_names_a_command_the_pinned_stack_lacks():
    assert len(SHIPPED) > 50  # the scan finds the package, docs and stages
    for old, new in GONE.items():
        assert not (BIN / old).exists()  # if it came back, this list is wrong
        named = [str(p.relative_to(REPO)) for p in SHIPPED if old in p.read_text(errors="replace")]
        assert named == [], f"{old} is not in the environment; use `{new}` in {named}"
