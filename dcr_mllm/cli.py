"""``dcr-mllm <command>``: parses arguments, then calls the library. Nothing else lives here."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from dcr_mllm.errors import DcrError


def _enhance(args: argparse.Namespace) -> None:
    from dcr_mllm.config import load_config
    from dcr_mllm.enhance.config import EnhanceConfig
    from dcr_mllm.enhance.recipe import run_enhance

    cfg = load_config(EnhanceConfig, args.config, args.overrides)
    tower = run_enhance(cfg, [args.stage] if args.stage else None)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"enhanced tower: {tower}" if tower else f"stage output: {cfg.output_dir}")


def _build_tiny(args: argparse.Namespace) -> None:
    from dcr_mllm.presets.tiny import build_tiny_preset

    for name, path in build_tiny_preset(args.root).items():
        print(f"{name}: {path}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dcr-mllm", description="DCR-enhanced vision towers for multimodal LLMs.")
    sub = parser.add_subparsers(dest="command", required=True)

    enhance = sub.add_parser("enhance", help="stage one: enhance a vision tower with DCR (projector, then LoRA), then export it")
    enhance.add_argument("--config", help="YAML config (default: the tiny preset)")
    enhance.add_argument("--stage", choices=["projector", "lora"], help="run only this stage")
    enhance.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. seed=1 lora_stage.max_steps=10")
    enhance.set_defaults(func=_enhance)

    tiny = sub.add_parser("build-tiny", help="build the tiny embedded models (random init, from configs) and print their paths")
    tiny.add_argument("--root", help="where to build them (default: $DCR_MLLM_CACHE/tiny or ~/.cache/dcr_mllm/tiny)")
    tiny.set_defaults(func=_build_tiny)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except DcrError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
