"""The evaluation commands: ``eval-tower`` (MMVP-VLM, probes, fine-grained pairs, the world), the
evaluation data (``make-eval-data``, ``prepare-eval-data``, ``eval-task-dir``), ``eval-mllm``
(lmms-eval over LLaVAs) and ``report`` (lmms-eval runs compared)."""

from __future__ import annotations

import argparse
import functools

from dcr_mllm.arguments import add_allow_pickle
from dcr_mllm.errors import DcrError


def register(sub: argparse._SubParsersAction) -> None:
    eval_tower_parser = sub.add_parser(
        "eval-tower",
        help="score towers on MMVP-VLM or a probe; write results.json, predictions.csv, results.md, chart.png",
    )
    eval_tower_parser.add_argument(
        "--tower",
        action="append",
        required=True,
        metavar="[NAME=]DIR",
        help="a tower directory or preset name; repeat to compare",
    )
    eval_tower_parser.add_argument(
        "--benchmark",
        required=True,
        action="append",
        metavar="NAME[=DATA]",
        help="mmvp-vlm, classification (zero-shot + linear probe), fine-grained (synthetic pairs), clip-benchmark "
        "(zero-shot classification and retrieval on clip_benchmark's data sets under DATA) or world (a make-eval-data "
        "world directory); repeat as NAME=DATA to compare the towers on several in one table and chart",
    )
    eval_tower_parser.add_argument(
        "--data",
        help="with one --benchmark: its data (the MMVP-VLM directory, the image folder for classification, the "
        "clip_benchmark root; fine-grained needs none)",
    )
    eval_tower_parser.add_argument("--output", required=True, help="directory for the report")
    eval_tower_parser.add_argument("--batch-size", type=int, default=64)
    eval_tower_parser.add_argument("--device", help="default: cuda if available, else cpu")
    eval_tower_parser.add_argument(
        "--pairs-per-attribute", type=int, default=20, help="fine-grained: pairs per scene attribute"
    )
    eval_tower_parser.add_argument(
        "--image-size", type=int, default=224, help="fine-grained: size of the generated images"
    )
    eval_tower_parser.add_argument("--seed", type=int, default=0, help="fine-grained: generator seed")
    eval_tower_parser.add_argument(
        "--preprocess",
        choices=["tower", "official"],
        default="tower",
        help="mmvp-vlm pixels: the tower's own image processor (default), or the official script's (the clip package's PIL pipeline)",
    )
    add_allow_pickle(eval_tower_parser)
    eval_tower_parser.add_argument(
        "--if-changed",
        action="store_true",
        help="keep a report in --output made from the same towers, data and settings instead of scoring again",
    )
    eval_tower_parser.set_defaults(func=eval_tower)

    make_eval_data_parser = sub.add_parser(
        "make-eval-data",
        help="write a synthetic dataset in a benchmark's layout (for trying the pipeline without downloads)",
    )
    make_eval_data_parser.add_argument("benchmark", choices=["mmvp-vlm", "classification", "world"])
    make_eval_data_parser.add_argument("--output", required=True, help="directory to create (must not exist)")
    make_eval_data_parser.add_argument(
        "--image-size", type=int, default=0, help="default 224 (world: 32, the world models' resolution)"
    )
    make_eval_data_parser.add_argument(
        "--per-class", type=int, default=20, help="classification: images per class in each of train/ and test/"
    )
    make_eval_data_parser.add_argument(
        "--count", type=int, default=1200, help="world: number of images (labels in DIR/labels.csv)"
    )
    make_eval_data_parser.add_argument(
        "--seed", type=int, default=0, help="world: any seed but 10-14, which draw the world's training images"
    )
    make_eval_data_parser.set_defaults(func=make_eval_data)

    prepare_parser = sub.add_parser(
        "prepare-eval-data",
        help="write MMVP and POPE (original files or synthetic) where the *_local lmms-eval tasks read them",
    )
    prepare_parser.add_argument(
        "--output", help="data directory (default: $DCR_EVAL_DATA or ~/.cache/dcr_mllm/eval_data)"
    )
    prepare_parser.add_argument("--mmvp", help="MMVP as distributed: a directory with Questions.csv and 'MMVP Images/'")
    prepare_parser.add_argument("--pope", help="a directory with POPE's coco_pope_{adversarial,popular,random}.json")
    prepare_parser.add_argument("--coco", help="COCO val2014 images (for --pope)")
    prepare_parser.add_argument(
        "--synthetic", action="store_true", help="small synthetic MMVP and POPE sets in the same schema"
    )
    prepare_parser.add_argument(
        "--world", type=int, default=0, metavar="N", help="the world's questions (world_local task) about N images"
    )
    prepare_parser.add_argument("--seed", type=int, default=0)
    prepare_parser.set_defaults(func=prepare_eval_data)

    task_dir_parser = sub.add_parser(
        "eval-task-dir", help="print the installed lmms-eval task folder, for lmms-eval's --include_path"
    )
    task_dir_parser.set_defaults(func=eval_task_dir)

    eval_mllm_parser = sub.add_parser(
        "eval-mllm",
        help="score LLaVA models on lmms-eval tasks (each only if its model, tower, tasks or data changed), "
        "then compare them in one report",
    )
    eval_mllm_parser.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="NAME=DIR[+TOWER]",
        help="a llava-hf directory (llava_hf), or DIR+TOWER to swap a tower in memory (dcr_llava); repeat to compare",
    )
    eval_mllm_parser.add_argument(
        "--tasks",
        default="dcr_suite_local",
        help="lmms-eval tasks or groups, comma-separated (default dcr_suite_local)",
    )
    eval_mllm_parser.add_argument("--nproc", type=int, default=1, help="processes (accelerate launch) per model")
    eval_mllm_parser.add_argument(
        "--offline",
        action="store_true",
        help="keep lmms-eval off the Hugging Face hub (also when HF_HUB_OFFLINE is set, or every task is local); "
        "otherwise hub tasks such as dcr_suite download what is not cached",
    )
    eval_mllm_parser.add_argument(
        "--output", default="outputs/eval_mllm", help="one folder per model, logs/, and report/"
    )
    eval_mllm_parser.set_defaults(func=eval_mllm)

    report_parser = sub.add_parser("report", help="compare lmms-eval runs: one table (Markdown + JSON) and a chart")
    report_parser.add_argument(
        "results",
        nargs="+",
        metavar="[NAME=]RESULTS",
        help="lmms-eval *_results.json files or --output_path directories",
    )
    report_parser.add_argument("--output", required=True, help="directory for report.md, report.json and report.png")
    report_parser.set_defaults(func=report, intermixed="results")


def eval_tower(args: argparse.Namespace) -> None:
    from pathlib import Path

    from dcr_mllm.evaluation.tower import evaluate_benchmarks, evaluate_towers, parse_tower_args

    towers = parse_tower_args(args.tower)
    named = [spec.partition("=") for spec in args.benchmark]
    if len(named) == 1 and not named[0][1]:  # one benchmark, its data given with --data
        run = functools.partial(evaluate_towers, towers, args.benchmark[0], data=args.data)
    else:
        if args.data is not None:
            raise DcrError("with several --benchmark, give each its data as NAME=DATA and leave out --data")
        benchmarks = {name: data or None for name, _, data in named}
        if len(benchmarks) != len(named):
            raise DcrError("a --benchmark is given twice; name each once")
        run = functools.partial(evaluate_benchmarks, towers, benchmarks)
    run(
        args.output,
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


def eval_task_dir(args: argparse.Namespace) -> None:
    from dcr_mllm.evaluation.mllm.eval_data import task_dir

    print(task_dir())


def eval_mllm(args: argparse.Namespace) -> None:
    from dcr_mllm.evaluation.mllm.run import evaluate_mllms

    report = evaluate_mllms(args.model, args.tasks, args.output, nproc=args.nproc, offline=args.offline)
    print((report / "report.md").read_text(encoding="utf-8"), end="")
    print(f"report: {report}")


def report(args: argparse.Namespace) -> None:
    from pathlib import Path

    from dcr_mllm.evaluation.mllm.report import compare_runs

    compare_runs(args.results, args.output)
    print(Path(args.output, "report.md").read_text(), end="")
    print(f"report: {args.output}")
