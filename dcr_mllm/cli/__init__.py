"""``dcr-mllm <command>``: parses arguments, then runs the command's handler, which calls the library.

One module per group of subcommands, each holding its parsers and their handlers (a handler checks
what argparse cannot, imports the library inside, so a command loads only what it uses, and prints
the result): ``stage_one`` (enhance, export-tower), ``stage_two`` (the LLaVA stages), ``checkpoints``
(swap-tower, convert-llava, convert-tower), ``models`` (build-tiny, presets, build-world, world), ``evaluation``
(eval-tower, the evaluation data, eval-mllm, report) and ``listing`` (summary, configs). What they
share, with the stage scripts' pipeline and the ablation, is ``dcr_mllm.arguments``."""

from __future__ import annotations

import argparse
import logging
import warnings

from dcr_mllm.arguments import parse_intermixed, run_reporting
from dcr_mllm.cli import checkpoints, evaluation, listing, models, stage_one, stage_two

#: the groups, in the order ``dcr-mllm --help`` lists their commands
GROUPS = (stage_one, stage_two, checkpoints, models, evaluation, listing)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dcr-mllm", description="DCR-enhanced vision towers for multimodal LLMs.")
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback of a user error too (also: DCR_MLLM_DEBUG=1)"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.register(sub)
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """The arguments, options and ``key=value`` words in any order (``dcr_mllm.arguments.parse_intermixed``)."""
    return parse_intermixed(parser, argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # DeepSpeed still calls torch.distributed functions that torch marks deprecated, once per step
    warnings.filterwarnings("ignore", message=r".*torch\.distributed\..* is deprecated", category=FutureWarning)
    args = parse_args(build_parser(), argv)
    return run_reporting(lambda: args.func(args), debug=args.debug)
