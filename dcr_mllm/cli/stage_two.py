"""Stage two's commands: ``llava-pretrain`` (LLaVA-1.5 projector pretraining with a tower) and
``llava-finetune`` (instruction tuning, then a llava-hf export)."""

from __future__ import annotations

import argparse

from dcr_mllm.arguments import add_training_config
from dcr_mllm.cli.training import is_rank_zero, training_config

STAGES = {
    "pretrain": "stage two: LLaVA-1.5 projector pretraining with a tower",
    "finetune": "stage two: LLaVA-1.5 instruction tuning, then export a llava-hf model",
}


def register(sub: argparse._SubParsersAction) -> None:
    for stage, text in STAGES.items():
        parser = sub.add_parser(f"llava-{stage}", help=text)
        add_training_config(
            parser,
            "YAML config (default: the packaged tiny config with stage one's tower, dcr_mllm/configs/llava_tiny.yaml)",
            "config overrides, e.g. finetune.max_steps=10",
        )
        parser.set_defaults(func=llava, stage=stage)


def llava(args: argparse.Namespace) -> None:
    from dcr_mllm.llava.train.recipe import LlavaTrainConfig, resolve_config, run_llava

    cfg = training_config(args, LlavaTrainConfig, "llava_tiny.yaml", resolve_config, ("pretrain", "finetune"))
    if cfg is None:
        return
    out = run_llava(cfg, args.stage, allow_config_change=args.allow_config_change, overwrite=args.overwrite)
    if is_rank_zero():
        print(f"{'llava-hf model' if args.stage == 'finetune' else 'pretrained projector'}: {out}")
