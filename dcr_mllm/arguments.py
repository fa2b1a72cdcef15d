"""What every command line of the package shares: the config arguments, the pickle switch, parsing
options and ``key=value`` words in any order, and turning a user error into one line and exit code 2.

Four programs parse arguments: ``dcr-mllm`` (``dcr_mllm.cli``, one module per group of
subcommands), the stage scripts' ``python -m dcr_mllm.pipeline``, the ablation and the budget curve
(``python -m dcr_mllm.enhance.ablation``, ``.budget``; their shared flags in ``enhance/world_runs.py``).
This module is their common base. It is a top-level
module that imports only ``dcr_mllm.io``, so the pipeline and ``enhance`` (low in the layers of
``tests/test_imports.py``) use it without importing the CLI above them.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from dcr_mllm.io import user_error_line

PICKLE_HELP = (
    "load .bin/.pt PyTorch pickles (restricted unpickler); without it they are refused with the command to convert them"
)
ALLOW_CONFIG_CHANGE = (
    "resume from checkpoints made with other training settings (learning rate, batch size, schedule, "
    "model, data); the new ones take effect from the resumed step"
)
OVERWRITE = (
    "remove the stage's output, and what is made from it, and train it again (a stage made from another tower, "
    "language model or data, or finished with other settings, is refused without it)"
)
PRINT_CONFIG = "print the resolved config (file + overrides + defaults) as YAML and exit"

#: what a group of subcommands hands ``dcr-mllm``: a function adding its parsers to the subparsers
Register = Callable[[argparse._SubParsersAction], None]


class OneLineParser(argparse.ArgumentParser):
    """Bad arguments are one line naming the problem and where the usage is, exit 2."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def add_config(parser: argparse.ArgumentParser, help: str, default: str | None = None) -> None:
    """``--config``, the YAML file.

    Args:
        parser: the command's parser.
        help: what the file is for, and what is read without it.
        default: the file read without ``--config`` (None: the command's own default).
    """
    parser.add_argument("--config", default=default, help=help)


def add_overrides(parser: argparse.ArgumentParser, help: str, metavar: str = "key=value") -> None:
    """The ``key=value`` config overrides, a positional list that may sit between options.

    Args:
        parser: the command's parser.
        help: the overrides' help.
        metavar: how the usage line shows one override.
    """
    parser.add_argument("overrides", nargs="*", metavar=metavar, help=help)
    parser.set_defaults(intermixed="overrides")


def add_training_config(parser: argparse.ArgumentParser, config_help: str, overrides_help: str) -> None:
    """A training command's config: ``--config``, ``--print-config``, ``--allow-config-change``, ``--overwrite``,
    overrides.

    Args:
        parser: the command's parser.
        config_help: what ``--config`` reads, and its default.
        overrides_help: the overrides' help, ending in ``e.g. KEY=VALUE ...`` (a test runs the example).
    """
    add_config(parser, config_help)
    parser.add_argument("--print-config", action="store_true", help=PRINT_CONFIG)
    parser.add_argument("--allow-config-change", action="store_true", help=ALLOW_CONFIG_CHANGE)
    parser.add_argument("--overwrite", action="store_true", help=OVERWRITE)
    add_overrides(parser, overrides_help)


def add_allow_pickle(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--allow-pickle", action="store_true", help=PICKLE_HELP)


def parse_intermixed(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Options and positional words in any order: words argparse leaves over after an option
    (``--stage lora key=value``) join the command's positional list (its ``intermixed`` default);
    argparse's own intermixed parsing does not support subcommands."""
    args, extra = parser.parse_known_args(argv)
    target = getattr(args, "intermixed", None)
    strays = [word for word in extra if target is None or word.startswith("-")]
    if strays:
        parser.error(f"unrecognized arguments: {' '.join(strays)}")
    if extra:
        setattr(args, target, [*getattr(args, target), *extra])
    return args


def run_reporting(run: Callable[[], object], debug: bool = False) -> int:
    """Run ``run``; a user error (``user_error_line``) is printed as its one line and gives exit code 2,
    any other error keeps its traceback, as does a user error under ``debug`` or ``DCR_MLLM_DEBUG``."""
    try:
        run()
    except Exception as err:
        line = user_error_line(err)
        if line is None or debug or os.environ.get("DCR_MLLM_DEBUG"):
            raise
        print(line, file=sys.stderr)
        return 2
    return 0
