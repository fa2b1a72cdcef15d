"""The commands that list and summarise: ``summary`` (the pipeline's tower and MLLM tables, loss
curves, artefacts) and ``configs`` (the shipped configs, each with what it is for)."""

from __future__ import annotations

import argparse

from dcr_mllm.errors import DcrError


def register(sub: argparse._SubParsersAction) -> None:
    summary_parser = sub.add_parser(
        "summary", help="print the pipeline summary: tower and MLLM tables, loss curves (PNG), artefacts"
    )
    summary_parser.add_argument(
        "--run", action="append", default=[], metavar="NAME=DIR", help="a training output directory (enhance or llava)"
    )
    summary_parser.add_argument("--tower-eval", default="outputs/eval_tower")
    summary_parser.add_argument("--mllm-eval", default="outputs/eval_mllm")
    summary_parser.add_argument("--output", help="also write the summary to this Markdown file")
    summary_parser.set_defaults(func=summary)

    configs_parser = sub.add_parser(
        "configs", help="list the shipped configs (packaged, and stages/configs from a clone's root), one line each"
    )
    configs_parser.set_defaults(func=configs)


def summary(args: argparse.Namespace) -> None:
    from pathlib import Path

    from dcr_mllm.evaluation.analysis.summary import summarize

    bad = [item for item in args.run if "=" not in item.strip("=")]
    if bad:
        raise DcrError(f"--run {bad[0]!r}: give NAME=DIR, e.g. --run enhance=outputs/enhance")
    runs = dict(item.split("=", 1) for item in args.run)
    chart = Path(args.output).with_suffix(".png") if args.output else None
    text = summarize(
        {name: Path(path) for name, path in runs.items()}, Path(args.tower_eval), Path(args.mllm_eval), chart
    )
    if args.output:
        Path(args.output).write_text(text)
    print(text, end="")


def configs(args: argparse.Namespace) -> None:
    from dcr_mllm.config_listing import configs_table

    print(configs_table(), end="")
