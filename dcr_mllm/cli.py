"""``dcr-mllm <command>``: parses arguments, then runs the command's function in ``dcr_mllm.commands``,
which calls the library. Nothing else lives here."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings

from dcr_mllm import commands
from dcr_mllm.io import user_error_line

PICKLE_HELP = (
    "load .bin/.pt PyTorch pickles (restricted unpickler); without it they are refused with the command to convert them"
)


ALLOW_CONFIG_CHANGE = (
    "resume from checkpoints made with other training settings (learning rate, batch size, schedule, "
    "model, data); the new ones take effect from the resumed step"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dcr-mllm", description="DCR-enhanced vision towers for multimodal LLMs.")
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback of a user error too (also: DCR_MLLM_DEBUG=1)"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    enhance = sub.add_parser(
        "enhance", help="stage one: enhance a vision tower with DCR (projector, then LoRA), then export it"
    )
    enhance.add_argument(
        "--config", help="YAML config (default: the packaged tiny config, dcr_mllm/configs/enhance_tiny.yaml)"
    )
    enhance.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved config (file + overrides + defaults) as YAML and exit",
    )
    enhance.add_argument("--stage", choices=["projector", "lora"], help="run only this stage")
    enhance.add_argument("--allow-config-change", action="store_true", help=ALLOW_CONFIG_CHANGE)
    enhance.add_argument(
        "overrides", nargs="*", metavar="key=value", help="config overrides, e.g. seed=1 lora_stage.max_steps=10"
    )
    enhance.set_defaults(func=commands.enhance, intermixed="overrides")

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
    export.set_defaults(func=commands.export_tower)

    for stage, text in (
        ("pretrain", "stage two: LLaVA-1.5 projector pretraining with a tower"),
        ("finetune", "stage two: LLaVA-1.5 instruction tuning, then export a llava-hf model"),
    ):
        llava = sub.add_parser(f"llava-{stage}", help=text)
        llava.add_argument(
            "--config",
            help="YAML config (default: the packaged tiny config with stage one's tower, dcr_mllm/configs/llava_tiny.yaml)",
        )
        llava.add_argument(
            "--print-config",
            action="store_true",
            help="print the resolved config (file + overrides + defaults) as YAML and exit",
        )
        llava.add_argument("--allow-config-change", action="store_true", help=ALLOW_CONFIG_CHANGE)
        llava.add_argument(
            "overrides", nargs="*", metavar="key=value", help="config overrides, e.g. finetune.max_steps=10"
        )
        llava.set_defaults(func=commands.llava, stage=stage, intermixed="overrides")

    swap = sub.add_parser(
        "swap-tower",
        help="put a tower into an existing LLaVA checkpoint (llava-hf LLaVA-1.5/NeXT/"
        "OneVision, or original LLaVA-1.5/1.6), streaming; verified",
    )
    swap.add_argument("--llava", required=True, metavar="SRC", help="the LLaVA checkpoint directory (never modified)")
    swap.add_argument("--tower", required=True, help="a HF CLIP/MetaCLIP/SigLIP tower directory or preset name")
    swap.add_argument(
        "--output", required=True, metavar="DST", help="directory to write (refused if it exists, unless --force)"
    )
    swap.add_argument("--dry-run", action="store_true", help="check and print what would change; write nothing")
    swap.add_argument(
        "--force", action="store_true", help="replace an existing DST (only once the new one is written and verified)"
    )
    swap.add_argument(
        "--allow-family-change",
        action="store_true",
        help="swap a SigLIP tower into a CLIP-based LLaVA-1.5 checkpoint or back; the projector must then be retrained",
    )
    swap.add_argument("--allow-pickle", action="store_true", help=PICKLE_HELP)
    swap.set_defaults(func=commands.swap_tower)

    convert = sub.add_parser(
        "convert-llava",
        help="convert an original LLaVA checkpoint (mm_vision_tower) to "
        "llava-hf, as transformers' scripts do (LLaVA-1.5 -> llava, LLaVA-1.6 -> llava_next)",
    )
    convert.add_argument("--input", required=True, metavar="ORIGINAL", help="the original LLaVA checkpoint directory")
    convert.add_argument(
        "--output", required=True, metavar="HF_DIR", help="directory to write (refused if it exists, unless --force)"
    )
    convert.add_argument("--force", action="store_true", help="replace an existing HF_DIR")
    convert.add_argument("--allow-pickle", action="store_true", help=PICKLE_HELP)
    convert.set_defaults(func=commands.convert_llava)

    tiny = sub.add_parser(
        "build-tiny", help="build the tiny embedded models (random init, from configs) and print their paths"
    )
    tiny.add_argument("--root", help="where to build them (default: $DCR_MLLM_CACHE/tiny or ~/.cache/dcr_mllm/tiny)")
    tiny.set_defaults(func=commands.build_tiny)

    presets = sub.add_parser(
        "presets", help="list every model preset: hub id, pinned revision, size, purpose, whether it is on this machine"
    )
    action = presets.add_mutually_exclusive_group()
    action.add_argument(
        "--download",
        metavar="NAME",
        help="fetch a preset (pinned revision; a denoiser's "
        "weights checked against their recorded SHA-256) and print its directory",
    )
    action.add_argument("--digest", metavar="PATH", help="print a file's SHA-256 and size, to record it in a preset")
    presets.set_defaults(func=commands.presets)

    world = sub.add_parser(
        "build-world", help="build the tiny world's base models (cached) and write its training and evaluation sets"
    )
    world.add_argument(
        "--output", default="outputs/world", help="directory for the world's data sets (default outputs/world)"
    )
    world.add_argument(
        "--rebuild",
        action="store_true",
        help="train the base models from their recipe instead of installing the shipped "
        "weights, and report how far the rebuild is from them (about 6 minutes on 2 cores; writes no data set)",
    )
    world.add_argument(
        "--rebuild-dir", default=None, help="where --rebuild trains (default $DCR_MLLM_CACHE/world_rebuild)"
    )
    world.set_defaults(func=commands.build_world)

    world_cmd = sub.add_parser(
        "world",
        help="the tiny world's measurements: `world premise` (is each attribute hidden from the base "
        "tower, and carried by DCR's condition?)",
    )
    world_cmd.add_argument("measure", choices=["premise"])
    world_cmd.add_argument(
        "--output", default="outputs/world", help="the world folder (build-world's; built if missing)"
    )
    world_cmd.add_argument("--count", type=int, default=256, help="validation images for the denoiser's sensitivity")
    world_cmd.set_defaults(func=commands.world)

    evaluate = sub.add_parser(
        "eval-tower",
        help="score towers on MMVP-VLM or a probe; write results.json, predictions.csv, results.md, chart.png",
    )
    evaluate.add_argument(
        "--tower",
        action="append",
        required=True,
        metavar="[NAME=]DIR",
        help="a tower directory or preset name; repeat to compare",
    )
    evaluate.add_argument(
        "--benchmark",
        required=True,
        help="mmvp-vlm, classification (zero-shot + linear probe), fine-grained (synthetic pairs) "
        "or world (a make-eval-data world directory: pairs, per-attribute probes, class)",
    )
    evaluate.add_argument(
        "--data", help="the MMVP-VLM directory, or the image folder for classification (fine-grained needs none)"
    )
    evaluate.add_argument("--output", required=True, help="directory for the report")
    evaluate.add_argument("--batch-size", type=int, default=64)
    evaluate.add_argument("--device", help="default: cuda if available, else cpu")
    evaluate.add_argument("--pairs-per-attribute", type=int, default=20, help="fine-grained: pairs per scene attribute")
    evaluate.add_argument("--image-size", type=int, default=224, help="fine-grained: size of the generated images")
    evaluate.add_argument("--seed", type=int, default=0, help="fine-grained: generator seed")
    evaluate.add_argument(
        "--preprocess",
        choices=["tower", "official"],
        default="tower",
        help="mmvp-vlm pixels: the tower's own image processor (default), or the official script's (the clip package's PIL pipeline)",
    )
    evaluate.add_argument("--allow-pickle", action="store_true", help=PICKLE_HELP)
    evaluate.add_argument(
        "--if-changed",
        action="store_true",
        help="keep a report in --output made from the same towers, data and settings instead of scoring again",
    )
    evaluate.set_defaults(func=commands.eval_tower)

    make_data = sub.add_parser(
        "make-eval-data",
        help="write a synthetic dataset in a benchmark's layout (for trying the pipeline without downloads)",
    )
    make_data.add_argument("benchmark", choices=["mmvp-vlm", "classification", "world"])
    make_data.add_argument("--output", required=True, help="directory to create (must not exist)")
    make_data.add_argument(
        "--image-size", type=int, default=0, help="default 224 (world: 32, the world models' resolution)"
    )
    make_data.add_argument(
        "--per-class", type=int, default=20, help="classification: images per class in each of train/ and test/"
    )
    make_data.add_argument("--count", type=int, default=1200, help="world: number of images (labels in DIR/labels.csv)")
    make_data.add_argument(
        "--seed", type=int, default=0, help="world: any seed but 10-14, which draw the world's training images"
    )
    make_data.set_defaults(func=commands.make_eval_data)

    prepare = sub.add_parser(
        "prepare-eval-data",
        help="write MMVP and POPE (original files or synthetic) where the *_local lmms-eval tasks read them",
    )
    prepare.add_argument("--output", help="data directory (default: $DCR_EVAL_DATA or ~/.cache/dcr_mllm/eval_data)")
    prepare.add_argument("--mmvp", help="MMVP as distributed: a directory with Questions.csv and 'MMVP Images/'")
    prepare.add_argument("--pope", help="a directory with POPE's coco_pope_{adversarial,popular,random}.json")
    prepare.add_argument("--coco", help="COCO val2014 images (for --pope)")
    prepare.add_argument(
        "--synthetic", action="store_true", help="small synthetic MMVP and POPE sets in the same schema"
    )
    prepare.add_argument(
        "--world", type=int, default=0, metavar="N", help="the world's questions (world_local task) about N images"
    )
    prepare.add_argument("--seed", type=int, default=0)
    prepare.set_defaults(func=commands.prepare_eval_data)

    task_dir = sub.add_parser(
        "eval-task-dir", help="print the installed lmms-eval task folder, for lmms-eval's --include_path"
    )
    task_dir.set_defaults(func=commands.eval_task_dir)

    mllm = sub.add_parser(
        "eval-mllm",
        help="score LLaVA models on lmms-eval tasks (each only if its model, tower, tasks or data changed), "
        "then compare them in one report",
    )
    mllm.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="NAME=DIR[+TOWER]",
        help="a llava-hf directory (llava_hf), or DIR+TOWER to swap a tower in memory (dcr_llava); repeat to compare",
    )
    mllm.add_argument(
        "--tasks",
        default="dcr_suite_local",
        help="lmms-eval tasks or groups, comma-separated (default dcr_suite_local)",
    )
    mllm.add_argument("--nproc", type=int, default=1, help="processes (accelerate launch) per model")
    mllm.add_argument("--output", default="outputs/eval_mllm", help="one folder per model, logs/, and report/")
    mllm.set_defaults(func=commands.eval_mllm)

    report = sub.add_parser("report", help="compare lmms-eval runs: one table (Markdown + JSON) and a chart")
    report.add_argument(
        "results",
        nargs="+",
        metavar="[NAME=]RESULTS",
        help="lmms-eval *_results.json files or --output_path directories",
    )
    report.add_argument("--output", required=True, help="directory for report.md, report.json and report.png")
    report.set_defaults(func=commands.report, intermixed="results")

    summary = sub.add_parser(
        "summary", help="print the pipeline summary: tower and MLLM tables, loss curves (PNG), artefacts"
    )
    summary.add_argument(
        "--run", action="append", default=[], metavar="NAME=DIR", help="a training output directory (enhance or llava)"
    )
    summary.add_argument("--tower-eval", default="outputs/eval_tower")
    summary.add_argument("--mllm-eval", default="outputs/eval_mllm")
    summary.add_argument("--output", help="also write the summary to this Markdown file")
    summary.set_defaults(func=commands.summary)

    configs = sub.add_parser(
        "configs", help="list the shipped configs (packaged, and stages/configs from a clone's root), one line each"
    )
    configs.set_defaults(func=commands.configs)
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
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


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # DeepSpeed still calls torch.distributed functions that torch marks deprecated, once per step
    warnings.filterwarnings("ignore", message=r".*torch\.distributed\..* is deprecated", category=FutureWarning)
    args = parse_args(build_parser(), argv)
    try:
        args.func(args)
    except Exception as err:
        line = user_error_line(err)
        if line is None or args.debug or os.environ.get("DCR_MLLM_DEBUG"):
            raise
        print(line, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
