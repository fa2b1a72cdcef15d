"""What the training commands (enhance, llava-pretrain, llava-finetune) share: their config, read
from ``--config`` (default: a packaged one) and the overrides, or printed for ``--print-config``."""

from __future__ import annotations

import argparse


def training_config(args: argparse.Namespace, cls, packaged: str, resolve, stages: tuple[str, ...]):
    """The training command's config; None once printed, for ``--print-config``.

    Args:
        args: the parsed arguments (``config``, ``overrides``, ``print_config``).
        cls: the config dataclass.
        packaged: the packaged config read without ``--config``, in ``dcr_mllm/configs``.
        resolve: the recipe's resolution of the config (what ``--print-config`` prints).
        stages: the config's training sections, each printed with what sets its number of steps.
    """
    from dcr_mllm.config import PACKAGED_CONFIGS, config_yaml, load_config
    from dcr_mllm.training.config import steps_governor

    cfg = load_config(cls, args.config or PACKAGED_CONFIGS / packaged, args.overrides)
    if not args.print_config:
        return cfg
    print(config_yaml(resolve(cfg)), end="")
    for stage in stages:
        print(f"# {stage}: the number of steps is set by {steps_governor(getattr(cfg, stage))}")
    return None


def is_rank_zero() -> bool:
    """Only the first process of a distributed run prints the result."""
    import os

    return int(os.environ.get("RANK", "0")) == 0
