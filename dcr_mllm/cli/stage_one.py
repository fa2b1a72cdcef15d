"""Stage one's commands: ``enhance`` (projector, then LoRA on the tower with DCR; export) and
``export-tower`` (the tower of any kept LoRA step) and ``push-tower`` (a tower and its card to the hub)."""

from __future__ import annotations

import argparse

from dcr_mllm.arguments import add_training_config
from dcr_mllm.cli.training import is_rank_zero, training_config


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "enhance", help="stage one: enhance a vision tower with DCR (projector, then LoRA), then export it"
    )
    add_training_config(
        parser,
        "YAML config (default: the packaged tiny config, dcr_mllm/configs/enhance_tiny.yaml)",
        "config overrides, e.g. seed=1 lora_stage.max_steps=10",
    )
    parser.add_argument("--stage", choices=["projector", "lora"], help="run only this stage")
    parser.set_defaults(func=enhance)

    export = sub.add_parser(
        "export-tower",
        help="export the tower of any kept LoRA step of a stage-one run (its checkpoints, the selected step)",
    )
    export.add_argument("run", metavar="RUN", help="the run's output_dir")
    export.add_argument(
        "--step", type=int, required=True, help="a LoRA step whose checkpoint is kept (the error lists them)"
    )
    export.add_argument("--output", help="directory to write (default RUN/tower_step_N)")
    export.add_argument("--force", action="store_true", help="replace an existing output directory")
    export.set_defaults(func=export_tower)

    push = sub.add_parser(
        "push-tower",
        help="upload a tower folder and its model card to a hub model repository, the card with the scores of "
        "eval-tower reports",
    )
    push.add_argument("tower", metavar="DIR", help="the tower folder (export-tower's, with its README.md card)")
    push.add_argument("repo", metavar="REPO", help="the hub model repository, owner/name (created if absent)")
    push.add_argument(
        "--results",
        action="append",
        default=[],
        metavar="REPORT",
        help="an eval-tower --output folder that scored DIR as it is now; repeat for more benchmarks",
    )
    push.add_argument("--private", action="store_true", help="create the repository private")
    push.add_argument("--dry-run", action="store_true", help="check everything and list the upload; contact nothing")
    push.set_defaults(func=push_tower)


def enhance(args: argparse.Namespace) -> None:
    from dcr_mllm.enhance.config import EnhanceConfig, resolve_config
    from dcr_mllm.enhance.recipe import run_enhance

    cfg = training_config(args, EnhanceConfig, "enhance_tiny.yaml", resolve_config, ("projector_stage", "lora_stage"))
    if cfg is None:
        return
    tower = run_enhance(
        cfg,
        [args.stage] if args.stage else None,
        allow_config_change=args.allow_config_change,
        overwrite=args.overwrite,
    )
    if is_rank_zero():
        print(f"enhanced tower: {tower}" if tower else f"stage output: {cfg.output_dir}")


def export_tower(args: argparse.Namespace) -> None:
    from dcr_mllm.enhance.export import export_step

    print(f"exported tower (LoRA step {args.step}): {export_step(args.run, args.step, args.output, force=args.force)}")


def push_tower(args: argparse.Namespace) -> None:
    from dcr_mllm.enhance.share import push_tower

    print("\n".join(push_tower(args.tower, args.repo, args.results, private=args.private, dry_run=args.dry_run)))
