"""What each ``dcr-mllm`` subcommand runs: one function per command, given its parsed arguments.

Thin on purpose: ``dcr_mllm.cli`` parses the arguments and picks the function; each function here
checks what argparse cannot, calls the library (imported inside, so a command loads only what it
uses) and prints the result."""

from __future__ import annotations

import argparse
import os

from dcr_mllm.errors import DcrError


def enhance(args: argparse.Namespace) -> None:
    from dcr_mllm.enhance.config import EnhanceConfig, resolve_config
    from dcr_mllm.enhance.recipe import run_enhance

    cfg = _training_config(args, EnhanceConfig, "enhance_tiny.yaml", resolve_config, ("projector_stage", "lora_stage"))
    if cfg is None:
        return
    tower = run_enhance(cfg, [args.stage] if args.stage else None, allow_config_change=args.allow_config_change)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"enhanced tower: {tower}" if tower else f"stage output: {cfg.output_dir}")


def _training_config(args: argparse.Namespace, cls, packaged: str, resolve, stages: tuple[str, ...]):
    """The training command's config (default: the packaged ``packaged``); None once printed, for ``--print-config``."""
    from dcr_mllm.config import PACKAGED_CONFIGS, config_yaml, load_config
    from dcr_mllm.training.config import steps_governor

    cfg = load_config(cls, args.config or PACKAGED_CONFIGS / packaged, args.overrides)
    if not args.print_config:
        return cfg
    print(config_yaml(resolve(cfg)), end="")
    for stage in stages:
        print(f"# {stage}: the number of steps is set by {steps_governor(getattr(cfg, stage))}")
    return None


def export_tower(args: argparse.Namespace) -> None:
    from dcr_mllm.enhance.export import export_step

    print(f"exported tower (LoRA step {args.step}): {export_step(args.run, args.step, args.output, force=args.force)}")


def llava(args: argparse.Namespace) -> None:
    from dcr_mllm.llava.train.recipe import LlavaTrainConfig, resolve_config, run_llava

    cfg = _training_config(args, LlavaTrainConfig, "llava_tiny.yaml", resolve_config, ("pretrain", "finetune"))
    if cfg is None:
        return
    out = run_llava(cfg, args.stage, allow_config_change=args.allow_config_change)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"{'llava-hf model' if args.stage == 'finetune' else 'pretrained projector'}: {out}")


def swap_tower(args: argparse.Namespace) -> None:
    from dcr_mllm.llava.checkpoints.swap import swap_tower

    report = swap_tower(
        args.llava,
        args.tower,
        args.output,
        force=args.force,
        dry_run=args.dry_run,
        allow_family_change=args.allow_family_change,
        allow_pickle=args.allow_pickle,
    )
    print("\n".join(report.lines()))


def convert_llava(args: argparse.Namespace) -> None:
    from dcr_mllm.llava.checkpoints.convert import convert_llava

    print("\n".join(convert_llava(args.input, args.output, force=args.force, allow_pickle=args.allow_pickle).lines()))


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


def eval_tower(args: argparse.Namespace) -> None:
    from pathlib import Path

    from dcr_mllm.evaluation.tower import evaluate_towers, parse_tower_args

    evaluate_towers(
        parse_tower_args(args.tower),
        args.benchmark,
        args.output,
        data=args.data,
        batch_size=args.batch_size,
        device=args.device,
        pairs_per_attribute=args.pairs_per_attribute,
        image_size=args.image_size,
        seed=args.seed,
        preprocess=args.preprocess,
        allow_pickle=args.allow_pickle,
        if_changed=args.if_changed,
    )
    print(Path(args.output, "results.md").read_text(encoding="utf-8"), end="")
    print(f"report: {args.output}")


def make_eval_data(args: argparse.Namespace) -> None:
    from dcr_mllm.evaluation.tower import write_classification_folder, write_mmvp_vlm

    if args.benchmark == "world":
        from dcr_mllm.world.scenes import write_world

        out = write_world(args.output, seed=args.seed, count=args.count, size=args.image_size or 32)
    elif args.benchmark == "mmvp-vlm":
        out = write_mmvp_vlm(args.output, image_size=args.image_size or 224, seed=args.seed)
    else:
        out = write_classification_folder(
            args.output, per_class=args.per_class, image_size=args.image_size or 224, seed=args.seed
        )
    print(f"synthetic {args.benchmark} data: {out}")


def prepare_eval_data(args: argparse.Namespace) -> None:
    from dcr_mllm.evaluation.mllm import eval_data

    root = args.output or str(eval_data.eval_data_root())
    if not (args.synthetic or args.mmvp or args.pope or args.world):
        raise DcrError("nothing to prepare; pass --synthetic, --world N, or --mmvp DIR and/or --pope DIR --coco DIR")
    if args.world < 0:
        raise DcrError(
            f"--world {args.world}: give the number of world images (every attribute asked in every kind about each)"
        )
    if args.pope and not args.coco:
        raise DcrError("--pope needs --coco, the COCO val2014 image directory its questions refer to")
    written = eval_data.prepare_eval_data(
        root, mmvp=args.mmvp, pope=args.pope, coco=args.coco, synthetic=args.synthetic, seed=args.seed, world=args.world
    )
    print("\n".join(str(p) for p in written))
    if args.output:
        print(f"export DCR_EVAL_DATA={root}   # so that the *_local lmms-eval tasks read it")


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
    measure_premise(args.output, count=args.count)
    print(Path(args.output, "premise.md").read_text(), end="")
    print(f"premise: {Path(args.output, 'premise.json')}")


def eval_task_dir(args: argparse.Namespace) -> None:
    from dcr_mllm.evaluation.mllm.eval_data import task_dir

    print(task_dir())


def eval_mllm(args: argparse.Namespace) -> None:
    from dcr_mllm.evaluation.mllm.run import evaluate_mllms

    report = evaluate_mllms(args.model, args.tasks, args.output, nproc=args.nproc)
    print((report / "report.md").read_text(encoding="utf-8"), end="")
    print(f"report: {report}")


def report(args: argparse.Namespace) -> None:
    from pathlib import Path

    from dcr_mllm.evaluation.mllm.report import compare_runs

    compare_runs(args.results, args.output)
    print(Path(args.output, "report.md").read_text(), end="")
    print(f"report: {args.output}")


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
