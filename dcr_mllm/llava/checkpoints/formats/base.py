"""What a LLaVA checkpoint format must say: where it keeps its tower, whether a tower fits, which
config and side files change with it, and how to check the written result. The swap core
(``llava.checkpoints.swap``) does the rest, the same for every format."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

from dcr_mllm.llava.checkpoints.checkpoint import Checkpoint, Tower


@dataclass
class Fit:
    """What checking a tower against a checkpoint found."""

    problems: list[str]
    notes: list[str] = field(default_factory=list)
    family_change: bool = False
    wants: str = ""  # the tower that would fit (``compat.tower_that_fits``), said with the problems

    def refusal(self, tower: object, checkpoint: object) -> str:
        """The one line that refuses ``tower`` for ``checkpoint``: every problem, then what would fit."""
        wants = f"; {self.wants}" if self.wants else ""
        return f"tower {tower} does not fit {checkpoint}: " + "; ".join(self.problems) + wants


@dataclass
class Changes:
    """A format's new config and side files, and the summary lines for them."""

    config: dict
    json_files: dict[str, dict]  # file name -> new content
    lines: list[str]
    notes: list[str] = field(default_factory=list)


class CheckpointFormat(ABC):
    """One LLaVA checkpoint format."""

    name: str
    prefixes: tuple[str, ...]  # checkpoint-key prefixes of the stored tower tensors
    needs_safetensors: bool  # False: .bin pickles are copied as they are

    @abstractmethod
    def holds(self, config: dict) -> bool:
        """Whether ``config.json``'s content is a checkpoint of this format."""

    @abstractmethod
    def check(self, checkpoint: Checkpoint, tower: Tower, allow_family_change: bool) -> Fit:
        """Every reason ``tower`` cannot go into ``checkpoint``, checked before anything is written."""

    @abstractmethod
    def changes(self, checkpoint: Checkpoint, tower: Tower, dst: Path, family_change: bool) -> Changes:
        """The new config and rewritten JSON side files."""

    @abstractmethod
    def verify_extra(self, tower: Tower, out: Path) -> str:
        """The format's own check of the written directory; returns its summary line."""

    def before_write(self) -> None:  # noqa: B027 - an optional hook, empty unless a format needs it
        """Work to overlap with the copy."""

    def write_extra(self, tower: Tower, out: Path) -> set[str]:
        """Write what the core does not (beside the shards, config and json files); returns the names written."""
        return set()
