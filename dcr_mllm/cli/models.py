"""The commands about models and the tiny world: ``build-tiny`` (the tiny preset), ``presets`` (every
model preset; download, digest), ``build-world`` (the world's base models and data) and ``world``
(its measurements)."""

from __future__ import annotations

import argparse

from dcr_mllm.errors import DcrError
from dcr_mllm.world.scenes import WORLD_VALUES


def register(sub: argparse._SubParsersAction) -> None:
    tiny_parser = sub.add_parser(
        "build-tiny", help="build the tiny embedded models (random init, from configs) and print their paths"
    )
    tiny_parser.add_argument(
        "--root", help="where to build them (default: $DCR_MLLM_CACHE/tiny or ~/.cache/dcr_mllm/tiny)"
    )
    tiny_parser.set_defaults(func=build_tiny)

    presets_parser = sub.add_parser(
        "presets", help="list every model preset: hub id, pinned revision, size, purpose, whether it is on this machine"
    )
    action = presets_parser.add_mutually_exclusive_group()
    action.add_argument(
        "--download",
        metavar="NAME",
        help="fetch a preset (pinned revision; a denoiser's "
        "weights checked against their recorded SHA-256) and print its directory",
    )
    action.add_argument("--digest", metavar="PATH", help="print a file's SHA-256 and size, to record it in a preset")
    presets_parser.set_defaults(func=presets)

    build_world_parser = sub.add_parser(
        "build-world", help="build the tiny world's base models (cached) and write its training and evaluation sets"
    )
    build_world_parser.add_argument(
        "--output", default="outputs/world", help="directory for the world's data sets (default outputs/world)"
    )
    build_world_parser.add_argument(
        "--rebuild",
        action="store_true",
        help="train the base models from their recipe instead of installing the shipped "
        "weights, and report how far the rebuild is from them (about 6 minutes on 2 cores; writes no data set)",
    )
    build_world_parser.add_argument(
        "--rebuild-dir", default=None, help="where --rebuild trains (default $DCR_MLLM_CACHE/world_rebuild)"
    )
    build_world_parser.set_defaults(func=build_world)

    world_parser = sub.add_parser(
        "world",
        help="the tiny world's measurements: `world premise` (is each attribute hidden from the base "
        "tower, and carried by DCR's condition?)",
    )
    world_parser.add_argument("measure", choices=["premise"])
    world_parser.add_argument(
        "--output",
        default=None,
        help="the world folder (build-world's; built if missing; default outputs/world, "
        "outputs/world-background-NAME with --one-background)",
    )
    world_parser.add_argument("--count", type=int, default=256, help="validation images for the denoiser's sensitivity")
    world_parser.add_argument(
        "--one-background",
        default="",
        choices=WORLD_VALUES["background"],
        metavar="NAME",
        help="the controlled premise's world: every scene on this background (gray, beige or slate), its models "
        "under $DCR_MLLM_CACHE/world-background-NAME (trained on first use, about 15 minutes on 2 cores)",
    )
    world_parser.set_defaults(func=world)


def build_tiny(args: argparse.Namespace) -> None:
    from dcr_mllm.presets.tiny import build_tiny_preset

    for name, path in build_tiny_preset(args.root).items():
        print(f"{name}: {path}")


def presets(args: argparse.Namespace) -> None:
    from dcr_mllm.presets.listing import digest_line, presets_table
    from dcr_mllm.presets.real import local_path

    if args.digest:
        print(digest_line(args.digest))
    elif args.download:
        print(local_path(args.download))
    else:
        print(presets_table(), end="")


def build_world(args: argparse.Namespace) -> None:
    if args.rebuild:
        from dcr_mllm.world.rebuild import rebuild_world

        rebuild_world(args.rebuild_dir)
        return
    from dcr_mllm.world.prepare import prepare_world

    for name, path in prepare_world(args.output).items():
        print(f"{name}: {path}")


def world(args: argparse.Namespace) -> None:
    from pathlib import Path

    from dcr_mllm.evaluation.analysis.premise import measure_premise

    if args.count < 12:
        raise DcrError(f"--count {args.count}: the premise needs at least 12 validation images")
    from dcr_mllm.world.models import WorldSpec

    spec = WorldSpec(one_background=args.one_background)
    output = args.output or "outputs/" + ("world-" + spec.variant if spec.variant else "world")
    measure_premise(output, spec, count=args.count)
    print(Path(output, "premise.md").read_text(), end="")
    print(f"premise: {Path(output, 'premise.json')}")
