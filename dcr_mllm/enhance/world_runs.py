"""What the ablation and the budget curve share: stage-one runs in the world from one base tower and
denoiser, each objective's settings, training and scoring in one-thread processes, the metric
table over seeds and the effects it states, and their common command-line arguments.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from dcr_mllm.arguments import add_config, add_overrides
from dcr_mllm.config import PACKAGED_CONFIGS, from_dict, load_config, merge_overrides, to_dict
from dcr_mllm.enhance.config import EnhanceConfig
from dcr_mllm.errors import DcrError
from dcr_mllm.io import atomic_dir
from dcr_mllm.world.models import MINI, WorldSpec
from dcr_mllm.world.prepare import prepare_world
from dcr_mllm.world.scenes import WORLD_VALUES

#: each objective of the ablation and the settings that make it (``dcr_tokens``: DCR conditioned on
#: the feature layer's patch tokens, ``objective.condition: tokens``)
VARIANTS = {
    "reconstruction": {"name": "reconstruction", "condition": "global"},
    "naive": {"name": "naive", "condition": "global"},
    "dcr": {"name": "dcr", "condition": "global"},
    "dcr_tokens": {"name": "dcr", "condition": "tokens"},
}
#: the one rule that chooses each run's step on the validation split, for every objective: the
#: feature-layer probe's mean over the attributes the paper claims, what a LLaVA reads
SELECT = "world/probe_layer/claim_mean"
#: the metrics whose effects over seeds the ablation and the budget curve state: what each DCR form is
#: claimed to raise (the missed attributes, on the global embedding and on the feature layer) and what it may cost
EFFECT_METRICS = ("probe_global/claim_mean", "probe_layer/claim_mean", "class/zero_shot")
#: the miniature world's set sizes (``--mini``: tests, seconds rather than minutes)
MINI_SIZES = {"eval_count": 36, "pairs": 2, "shard_count": 64, "val_count": 24}


def add_world_run_arguments(parser: argparse.ArgumentParser, output: str, overrides_help: str) -> None:
    """The arguments both pipelines take: output, seeds, jobs, config, ``--mini``, ``--one-background``
    and stage-one overrides for every run."""
    parser.add_argument("--output", default=output)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=2, help="one-thread processes at a time")
    add_config(parser, "stage-one config (default: the packaged enhance_world.yaml)")
    parser.add_argument(
        "--mini", action="store_true", help="a miniature world and evaluation (tests: seconds, not minutes)"
    )
    parser.add_argument(
        "--one-background",
        default="",
        choices=WORLD_VALUES["background"],
        metavar="NAME",
        help="the controlled premise: a world whose every scene is on this background (gray, beige or slate), its "
        "models built under $DCR_MLLM_CACHE/world-background-NAME; the condition then carries background no more",
    )
    add_overrides(parser, overrides_help, metavar="KEY=VALUE")


def world_of(args: argparse.Namespace) -> tuple[WorldSpec, dict[str, int]]:
    """The world ``add_world_run_arguments``' flags ask for, and its set sizes (none: the defaults)."""
    spec = dataclasses.replace(MINI if args.mini else WorldSpec(), one_background=args.one_background)
    return spec, MINI_SIZES if args.mini else {}


def stage_one_config(config: str | Path | None) -> Path:
    """The user's stage-one config, or the packaged world one; a missing file is refused."""
    config = Path(config or PACKAGED_CONFIGS / "enhance_world.yaml")
    if not config.is_file():
        raise DcrError(f"config {config} does not exist; pass a stage-one YAML file")
    return config


def run_jobs(commands: list[tuple[list[str], Path]], jobs: int) -> None:
    """Run each (argv, log file) in a one-thread process, ``jobs`` at a time; fail naming the logs."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    pending, running, failed = list(commands), [], []
    while pending or running:
        while pending and len(running) < jobs:
            argv, log = pending.pop(0)
            log.parent.mkdir(parents=True, exist_ok=True)
            with open(log, "w") as stream:  # the child keeps its own handle
                running.append((subprocess.Popen(argv, env=env, stdout=stream, stderr=subprocess.STDOUT), log))
        process, log = running.pop(0)
        if process.wait() != 0:
            failed.append(str(log))
    if failed:
        raise DcrError(f"{len(failed)} run(s) failed; see {', '.join(failed)}")


def prepare_runs(
    out: Path, spec: WorldSpec, world_root, shard_count: int, eval_count: int, val_count: int
) -> tuple[dict[str, Path], Path]:
    """The world's models and sets for stage-one runs under ``out`` (``prepare_world``, no LLaVA
    data), and ``out/base/tower``, the base CLIP every run starts from, scored like them."""
    out.mkdir(parents=True, exist_ok=True)
    world = prepare_world(
        out, spec, world_root, shard_count=shard_count, conversation_count=0, eval_count=eval_count, val_count=val_count
    )
    base = out / "base" / "tower"
    if not base.is_dir():
        with atomic_dir(base) as tmp:
            shutil.copytree(world["world-clip"], tmp, dirs_exist_ok=True)
    return world, base


def score_towers(scored: list[tuple[Path, Path]], data: Path, pairs: int, jobs: int) -> None:
    """Write each ``(tower, result file)``'s world metrics on ``data`` where not yet written: the towers
    shared out among ``jobs`` one-thread processes, each reading the set once (logs: ``data``'s
    parent ``/scoring``)."""
    missing = [(tower, result) for tower, result in scored if not result.is_file()]
    shares = [missing[i::jobs] for i in range(min(jobs, len(missing)))]
    evaluate = [
        (
            [
                *(sys.executable, "-m", "dcr_mllm.evaluation.tower.world_metrics"),
                *("--data", str(data), "--pairs", str(pairs)),
                *(arg for tower, result in share for arg in ("--tower", str(tower), "--output", str(result))),
            ],
            data.parent / "scoring" / f"job{i}.log",
        )
        for i, share in enumerate(shares)
    ]
    run_jobs(evaluate, jobs)


def train_args(config: Path, overrides: list[str], ours: list[str]) -> list[str]:
    """One run's ``dcr-mllm enhance`` command: the user's overrides, then the ablation's own settings
    (``ours``: models, data, output, seed, validation, objective), which replace a user's value of the
    same key, each key given once."""
    return [sys.executable, "-m", "dcr_mllm.cli", "enhance", "--config", str(config), *merge_overrides(overrides, ours)]


def validation_overrides(config: Path, overrides: list[str], val: Path, pairs: int) -> list[str]:
    """Point the config's evaluation during training at this ablation's validation set, and choose
    each run's step on it by ``SELECT``; none when the config evaluates nothing during training."""
    if not load_config(EnhanceConfig, config, overrides).eval.every:
        return []
    return [
        f"eval.benchmarks=[{{name: world, data: {json.dumps(str(val))}, pairs_per_attribute: {pairs}}}]",
        f"eval.select={SELECT}",
    ]


def objective_overrides(config: Path, overrides: list[str], variant: dict[str, str]) -> list[str]:
    """The override that makes the shared config one objective's: its whole ``objective`` section, the
    variant's settings over the shared ones that objective reads (another objective's own settings,
    which it would refuse, left out), the token form's at their defaults under a global condition."""
    from dcr_mllm.objectives.settings import SETTINGS, token_only_keys

    shared = to_dict(load_config(EnhanceConfig, config, overrides).objective)
    kind = SETTINGS[variant["name"]]
    own = {f.name for f in dataclasses.fields(kind)}
    section = from_dict(kind, {**{k: v for k, v in shared.items() if k in own}, **variant}, prefix="objective.")
    for key in token_only_keys(section):
        name = key.removeprefix("objective.")
        setattr(section, name, getattr(kind(), name))
    return [f"objective={json.dumps(to_dict(section))}"]


def contrasts(objectives: list[str]) -> list[tuple[str, str]]:
    """What the ablation compares: every objective against base, each DCR form against naive."""
    against_naive = [(o, "naive") for o in ("dcr", "dcr_tokens") if o in objectives and "naive" in objectives]
    return [(o, "base") for o in objectives if o != "base"] + against_naive


def effects(table: dict, contrasts: list[tuple[str, str]]) -> dict:
    """Each ``(objective, against)`` on ``EFFECT_METRICS``: the seed-level effect (points), its 95 %
    interval, p and the smallest effect detectable with 80 % power (Welch over seeds; against base,
    one tower, a one-sample t test); pairs of which one side is missing are left out."""
    from dcr_mllm.evaluation.analysis.seed_effect import seed_effect

    out = {}
    for other, against in contrasts:
        if other not in table or against not in table:
            continue
        for metric in EFFECT_METRICS:
            mine = table[other][metric]["seeds"]
            theirs = table[against][metric]["seeds"] * (len(mine) if against == "base" else 1)
            effect = seed_effect(theirs, mine)
            out[f"{other} - {against}: {metric}"] = {
                "effect": effect["effect"],
                "ci": [effect["low"], effect["high"]],
                "p": effect["p"],
                "detectable": effect["detectable"],
                "seeds": len(mine),
            }
    return out


def metric_table(base: dict[str, float], scores: dict[str, list[dict[str, float]]]) -> dict:
    """Mean, std and per-seed values of every metric per objective, and each seed minus base."""
    table = {"base": {metric: {"mean": value, "std": 0.0, "seeds": [value]} for metric, value in base.items()}}
    for objective, per_seed in scores.items():
        table[objective] = {}
        for metric, base_value in base.items():
            values = [seed_scores[metric] for seed_scores in per_seed]
            table[objective][metric] = {
                "mean": statistics.fmean(values),
                "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                "seeds": values,
                "minus_base": [v - base_value for v in values],
            }
    return table
