"""``python -m dcr_mllm.pipeline STEP ...``: what ``stages/*.sh`` run. ``--help`` on any step (or
on its script) shows its flags and examples; flags fall back to the environment variables named."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from dcr_mllm.arguments import OneLineParser, add_config, run_reporting
from dcr_mllm.errors import DcrError
from dcr_mllm.pipeline.launch import StepFailed

TRAINING_STEPS = {  # step (the dcr-mllm command it runs) -> (default config, script, help)
    "enhance": (
        "stages/configs/tiny/enhance.yaml",
        "1_enhance_tower.sh",
        "Stage 1: enhance a vision tower with DCR (projector stage, then LoRA stage), then export it.",
    ),
    "llava-pretrain": (
        "stages/configs/tiny/llava.yaml",
        "2_llava_pretrain.sh",
        "Stage 2: LLaVA-1.5 pretraining with a vision tower (default: stage one's tiny tower, tiny Llama).",
    ),
    "llava-finetune": (
        "stages/configs/tiny/llava.yaml",
        "3_llava_finetune.sh",
        "Stage 3: LLaVA-1.5 instruction tuning (default: the tiny preset).",
    ),
}
TRAINING_EPILOG = """examples:
  bash stages/{script}                                   # the tiny preset, one CPU process
  bash stages/{script} --config C.yaml --nproc 8
  bash stages/{script} --config C.yaml --nproc 8 --hostfile hosts.txt   # multi-node (DeepSpeed's launcher)
  bash stages/{script} key=value ...                     # config overrides; dcr-mllm's own flags pass through too

Flags fall back to the environment: CONFIG, NPROC, HOSTFILE. Rerunning a finished run does
nothing; rerunning an interrupted one resumes from its last checkpoint."""
RUN_ALL_EPILOG = """examples:
  bash stages/run_all.sh            # the tiny world (default): trained world models, open questions (world_local_open), 2 CPU cores, ~8-10 min the first time
  bash stages/run_all.sh --full     # the same with the world LLaVAs' long schedule (llava_full.yaml) on every kind of question (world_local)
  bash stages/run_all.sh --seeds 3  # three LLaVAs per tower: the tower's effect judged over training runs (Welch's t-test per attribute)
  bash stages/run_all.sh --tiny     # the random tiny preset on synthetic data: every stage in ~4 minutes
  bash stages/run_all.sh --config-dir stages/configs/paper_clip_l14_224 --nproc 8 --tower-eval-data /data/MMVP_VLM --tasks dcr_suite  # a real tower, scored on the real benchmarks
  bash stages/run_all.sh --config-dir stages/configs/paper_clip_l14_224 --synthetic-eval   # ... on synthetic stand-ins

A config directory holds enhance.yaml (stage 1) and llava.yaml (stages 2-3); the world's are in
stages/configs/world and its data comes from `dcr-mllm build-world` (step 0). On one CPU process
the base-tower LLaVA trains and is scored alongside stage one and then the DCR-tower LLaVA (one
thread each).
A real tower (not a tiny or world preset) needs real evaluation data, --tower-eval-data (MMVP-VLM) and
--tasks (lmms-eval tasks: hub ones such as dcr_suite, or local ones prepared with `dcr-mllm
prepare-eval-data`), or --synthetic-eval; every table scored on synthetic data says so.
Every stage skips what is already complete, so a rerun resumes where a run stopped, and a
finished run takes seconds."""


def build_parser() -> argparse.ArgumentParser:
    env = os.environ.get
    parser = OneLineParser(prog="python -m dcr_mllm.pipeline", description=__doc__)
    sub = parser.add_subparsers(dest="step", required=True, parser_class=OneLineParser)
    for step, (config, script, text) in TRAINING_STEPS.items():
        p = sub.add_parser(
            step,
            prog=f"stages/{script}",
            description=text,
            epilog=TRAINING_EPILOG.format(script=script),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        add_config(p, "the command's YAML config (CONFIG)", default=env("CONFIG") or config)
        p.add_argument("--nproc", type=int, default=int(env("NPROC") or 1))
        p.add_argument("--hostfile", default=env("HOSTFILE") or None)
    p = sub.add_parser("llava", description="Stages 2 and 3 for one tower (run_all's side job).")
    p.add_argument("--variant", required=True)
    p.add_argument("--config", required=True)
    p = sub.add_parser(
        "eval-tower",
        prog="stages/4_eval_tower.sh",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Stage 4: measure vision towers -- MMVP-VLM, the classification probes (zero-shot and linear probe: "
        "D-Ability) and the fine-grained pairs (P-Ability) -- then print a summary table.",
        epilog="examples:\n  bash stages/4_eval_tower.sh      # tiny-clip vs stage one's tower, synthetic data\n"
        '  bash stages/4_eval_tower.sh --towers "base=/models/clip-l14 dcr=outputs/enhance_clip_l14_224/tower" '
        "--data /data/MMVP_VLM --probe-data /data/imagenet_val_subset\n"
        '  bash stages/4_eval_tower.sh --towers "base=world-clip dcr=outputs/enhance_world/tower" --world outputs/world/eval\n\n'
        "Reports go to OUTPUT/<benchmark>/ with what they were made from (made_from.json: settings, and the towers'\n"
        "and data's files); a report made from the same is not scored again.",
    )
    p.add_argument(
        "--towers",
        default=env("TOWERS") or "base=tiny-clip dcr=outputs/enhance_tiny/tower",
        help="space-separated [NAME=]DIR or preset names (TOWERS)",
    )
    p.add_argument(
        "--data",
        default=env("DATA") or None,
        help="a real MMVP-VLM directory (DATA; default: a synthetic one under OUTPUT/data)",
    )
    p.add_argument(
        "--probe-data",
        default=env("PROBE_DATA") or None,
        help="an image folder for the classification probes (PROBE_DATA; default: synthetic)",
    )
    p.add_argument(
        "--world",
        default=env("WORLD") or None,
        help="a labelled world set: the world's metrics instead of the three benchmarks (WORLD)",
    )
    p.add_argument("--output", default=env("OUTPUT") or "outputs/eval_tower", help="(OUTPUT)")
    p = sub.add_parser(
        "eval-mllm",
        prog="stages/5_eval_mllm.sh",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Stage 5: score LLaVA models on the lmms-eval task suite (the package's tasks), then compare them.",
        epilog="examples:\n  bash stages/5_eval_mllm.sh      # stage two's model vs the base-tower model, local synthetic MMVP + POPE\n"
        '  bash stages/5_eval_mllm.sh --models "dcr=/ckpt/llava-dcr base=/ckpt/llava-1.5-7b-hf" --tasks dcr_suite --nproc 8\n'
        '  bash stages/5_eval_mllm.sh --models "swap=/ckpt/llava-1.5-7b-hf+outputs/enhance_clip_l14_336/tower"\n\n'
        "A model is NAME=DIR (a llava-hf directory, lmms-eval's llava_hf) or NAME=DIR+TOWER (dcr_llava: the tower\n"
        "swapped in memory). Local data: $DCR_EVAL_DATA (default outputs/eval_data). `dcr-mllm eval-mllm` writes the\n"
        "local tasks' data where it is missing or stale, and scores a model again only when its model, tower, tasks\n"
        "or data changed.",
    )
    p.add_argument(
        "--models",
        default=env("MODELS") or "dcr=outputs/llava_tiny/model base=outputs/llava_tiny_base/model",
        help="(MODELS)",
    )
    p.add_argument("--tasks", default=env("TASKS") or "dcr_suite_local", help="(TASKS)")
    p.add_argument("--nproc", type=int, default=int(env("NPROC") or 1))
    p.add_argument("--output", default=env("OUTPUT") or "outputs/eval_mllm", help="(OUTPUT)")
    p.add_argument(
        "--offline", action="store_true", help="keep lmms-eval off the hub (also when HF_HUB_OFFLINE is set)"
    )
    p = sub.add_parser(
        "calibrate",
        description="Calibrate the world's stage two: a tower that knows every attribute (positive control) and "
        "the base tower made blind to hue (negative control) through the same LLaVA pipeline as the base tower, "
        "SEEDS LLaVAs each; each control's effect against the base over seeds, and whether it is detected.",
        epilog="example: bash stages/calibrate.sh --seeds 3   # writes outputs/calibration/report.md and results.json",
    )
    p.add_argument("--seeds", type=int, default=3, help="LLaVAs per tower (default 3; at least 2)")
    p.add_argument(
        "--output", default="outputs/calibration", help="where everything goes (default outputs/calibration)"
    )
    p.add_argument("--nproc", type=int, default=1)
    p.add_argument("--overwrite", action="store_true", help="train every LLaVA again")

    p = sub.add_parser(
        "run-all",
        prog="stages/run_all.sh",
        epilog=RUN_ALL_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="The whole pipeline: enhance a tower (1), train LLaVA with it (2, 3) and, as the baseline, with the "
        "base tower, score both towers (4) and both LLaVAs (5), then print a summary.",
    )
    p.add_argument("--config-dir", help="a directory with enhance.yaml and llava.yaml")
    p.add_argument("--tiny", action="store_true", help="the random tiny preset on synthetic data (stages/configs/tiny)")
    p.add_argument("--full", action="store_true", help="the world LLaVAs' long schedule on every kind of question")
    p.add_argument(
        "--seeds",
        type=int,
        default=int(env("SEEDS") or 1),
        help="LLaVAs per tower, differing only in their seed; the summary judges the tower's effect over them (SEEDS; "
        "default 1: one run per tower cannot attribute a difference to the tower)",
    )
    p.add_argument(
        "--tasks",
        default=env("TASKS") or None,
        help="stage 5's lmms-eval tasks (TASKS; default dcr_suite_local, whose data is synthetic unless prepared)",
    )
    p.add_argument(
        "--tower-eval-data",
        default=env("TOWER_EVAL_DATA") or None,
        help="stage 4's MMVP-VLM directory (TOWER_EVAL_DATA; default: a synthetic one)",
    )
    p.add_argument(
        "--probe-data",
        default=env("PROBE_DATA") or None,
        help="stage 4's image folder for the classification probes (PROBE_DATA; default: synthetic shapes)",
    )
    p.add_argument(
        "--synthetic-eval",
        action="store_true",
        help="score a real tower on synthetic stand-ins (otherwise refused without --tower-eval-data and --tasks)",
    )
    p.add_argument("--nproc", type=int, default=int(env("NPROC") or 1))
    p.add_argument("--hostfile", default=env("HOSTFILE") or None)
    p.add_argument(
        "--overwrite", action="store_true", help="train every stage again (each training step's --overwrite)"
    )
    return parser


def run_step(args: argparse.Namespace, extra: list[str]) -> None:
    from dcr_mllm.pipeline import steps

    if args.step in TRAINING_STEPS:
        steps.training_stage(args.step, args.config, args.nproc, args.hostfile, extra)
        return
    if extra and args.step != "llava":
        raise DcrError(f"unknown argument {extra[0]} (see the step's --help)")
    if args.step == "llava":
        steps.llava(args.variant, args.config, extra, 1, None, steps.Clock())
    elif args.step == "eval-tower":
        steps.eval_tower(args.towers, args.output, args.data, args.probe_data, args.world)
    elif args.step == "eval-mllm":
        steps.eval_mllm(args.models, args.tasks, args.nproc, args.output, args.offline)
    elif args.step == "calibrate":
        from dcr_mllm.pipeline.calibrate import calibrate

        calibrate(args.seeds, args.output, args.nproc, args.overwrite)
    else:
        from dcr_mllm.pipeline.run_all import plan, run_all

        p = plan(
            args.config_dir,
            args.tiny,
            args.full,
            args.tasks,
            args.tower_eval_data,
            args.probe_data,
            args.synthetic_eval,
        )
        run_all(p, args.nproc, args.hostfile, args.seeds, args.overwrite)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["ablation"], ["budget"]):  # the ablation and the budget curve parse their own arguments
        return subprocess.run(
            [sys.executable, "-m", f"dcr_mllm.enhance.{argv[0]}", *argv[1:]], env={**os.environ, "HF_HUB_OFFLINE": "1"}
        ).returncode
    args, extra = build_parser().parse_known_args(argv)
    try:
        return run_reporting(lambda: run_step(args, extra))
    except StepFailed as failed:
        if failed.message:
            print(f"error: {failed.message}", file=sys.stderr)
        return failed.returncode


if __name__ == "__main__":
    sys.exit(main())
