"""``dcr-mllm configs``: the shipped configs, one line each saying what it is for.

What a config is for is the first sentence of its opening comment, so a file's own header is the one
place to say it. The packaged configs are listed wherever the package is installed; the stage
configs (``stages/configs``, with their shared bases) when the command runs from a clone's root,
where the stage scripts run too."""

from __future__ import annotations

import re
from pathlib import Path

from dcr_mllm.config import PACKAGED_CONFIGS
from dcr_mllm.strict import read_text

#: the stage scripts' configs, relative to the clone's root (where ``stages/*.sh`` run)
STAGE_CONFIGS = Path("stages") / "configs"
WIDTH = 100  # of the description, cut at a word beyond it


def shipped_configs() -> list[Path]:
    """The packaged configs, then the stage configs found from here, each folder's in name order."""
    stage = sorted(STAGE_CONFIGS.rglob("*.yaml"), key=lambda p: (p.parent != STAGE_CONFIGS, p.parent, p.name))
    return [*sorted(PACKAGED_CONFIGS.glob("*.yaml")), *stage]


def purpose(path: Path) -> str:
    """The first sentence (or clause, to ``:`` or ``;``) of the comment a config file opens with."""
    lines = []
    for line in read_text(path).splitlines():
        if not line.startswith("#") or line.startswith("#  "):  # a command example ends the prose
            break
        lines.append(line.lstrip("#").strip())
    text = " ".join(lines)
    first = re.split(r"(?<=[.:;])\s", text, maxsplit=1)[0].rstrip(".:;")
    if len(first) > WIDTH:
        first = first[:WIDTH].rsplit(" ", 1)[0].rstrip(",;:") + " ..."
    return first or "(no opening comment)"


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def configs_table() -> str:
    """``PATH  WHAT IT IS FOR`` per shipped config, aligned, with a header line."""
    rows = [(_shown(path), purpose(path)) for path in shipped_configs()]
    width = max(len(name) for name, _ in rows)
    lines = [f"{'config'.ljust(width)}  what it is for"]
    lines += [f"{name.ljust(width)}  {text}" for name, text in rows]
    if not STAGE_CONFIGS.is_dir():
        lines.append("(run from the repository's root to list the stage configs in stages/configs too)")
    return "\n".join(lines) + "\n"
