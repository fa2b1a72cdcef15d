"""The paper's ablation in the world: reconstruction-only, naive (reconstruction + contrastive),
DCR, and DCR conditioned on patch tokens (``dcr_tokens``), from the same base tower and denoiser,
with the same budget, over several seeds.

Writes the premise first (``OUT/premise.{md,json}``, ``evaluation.analysis.premise``), then ``OUT/base/tower``
and ``OUT/<objective>/seed<k>/tower`` (stage one's own output), each tower's metrics
(``world_metrics.json`` beside it), and ``OUT/results.json``, ``OUT/report.md`` and
``OUT/chart.png``: the premise table, every metric as mean +- std over seeds, each objective
against the base seed by seed, and the paper's claims judged on them (``claims``). With the config's ``eval.every`` each run also scores its tower on the world's
validation set (``OUT/val``, its own seed) while it trains: ``OUT/curves.png`` and the report's
curve tables show where each objective gains and where it starts to lose; each run's step is then
also chosen on that split by one rule for every objective (``SELECT``), exported as ``tower`` beside
the last step's ``tower_last``, and both are scored and reported. Training and evaluation run in one-thread processes, ``--jobs`` at a time; finished
pieces are skipped, so a rerun only redoes what is missing.

    python -m dcr_mllm.enhance.ablation --output outputs/ablation --seeds 3
    python -m dcr_mllm.enhance.ablation --output outputs/ablation_gray --seeds 3 --one-background gray
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

from dcr_mllm.arguments import add_config, add_overrides, parse_intermixed, run_reporting
from dcr_mllm.config import PACKAGED_CONFIGS, from_dict, load_config, merge_overrides, to_dict
from dcr_mllm.enhance.ablation_report import HEADLINE, chart, curves_chart, report
from dcr_mllm.enhance.config import EnhanceConfig
from dcr_mllm.enhance.export import MODEL_CARD
from dcr_mllm.enhance.watch import EVAL_FILE
from dcr_mllm.errors import DcrError
from dcr_mllm.evaluation.analysis.premise import measure_premise
from dcr_mllm.io import atomic_dir
from dcr_mllm.world.models import MINI, WorldSpec
from dcr_mllm.world.prepare import EVAL_COUNT, SHARD_COUNT, VAL_COUNT, prepare_world
from dcr_mllm.world.scenes import WORLD_VALUES

#: each objective of the ablation and the settings that make it (``dcr_tokens``: DCR conditioned on
#: the feature layer's patch tokens, ``objective.condition: tokens``)
VARIANTS = {
    "reconstruction": {"name": "reconstruction", "condition": "global"},
    "naive": {"name": "naive", "condition": "global"},
    "dcr": {"name": "dcr", "condition": "global"},
    "dcr_tokens": {"name": "dcr", "condition": "tokens"},
}
OBJECTIVES = tuple(VARIANTS)
#: the one rule that chooses each run's step on the validation split, for every objective: the
#: feature-layer probe's mean over the attributes the paper claims, what a LLaVA reads
SELECT = "world/probe_layer/claim_mean"
#: the metrics whose effects over seeds the ablation and the budget curve state: what each DCR form is
#: claimed to raise (the missed attributes, on the global embedding and on the feature layer) and what it may cost
EFFECT_METRICS = ("probe_global/claim_mean", "probe_layer/claim_mean", "class/zero_shot")


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


def run_ablation(
    output: str | Path,
    seeds: int = 3,
    jobs: int = 2,
    config: str | Path | None = None,
    overrides: list[str] = (),
    spec: WorldSpec | None = None,
    world_root: str | Path | None = None,
    eval_count: int = EVAL_COUNT,
    pairs: int = 30,
    shard_count: int = SHARD_COUNT,
    val_count: int = VAL_COUNT,
) -> Path:
    if seeds < 1 or jobs < 1:
        raise DcrError(f"--seeds {seeds} and --jobs {jobs}: both must be at least 1")
    config = Path(config or PACKAGED_CONFIGS / "enhance_world.yaml")
    if not config.is_file():
        raise DcrError(f"config {config} does not exist; pass a stage-one YAML file")
    last_step = load_config(EnhanceConfig, config, overrides).lora_stage.max_steps  # bad overrides: before any work
    spec = spec or WorldSpec()
    out = Path(output).resolve()
    world, base = prepare_runs(out, spec, world_root, shard_count, eval_count, val_count)
    models, shards = {"clip": world["world-clip"], "sd": world["world-sd"]}, world["shards"]
    if not (out / "premise.json").is_file():
        measure_premise(out, spec, world_root, count=min(256, val_count), val_count=val_count)

    runs = {(objective, seed): out / objective / f"seed{seed}" for objective in OBJECTIVES for seed in range(seeds)}
    own = {objective: objective_overrides(config, overrides, VARIANTS[objective]) for objective in OBJECTIVES}
    watch = validation_overrides(config, overrides, world["val"], pairs)
    train = [
        (
            train_args(
                config,
                overrides,
                [
                    f"tower={models['clip']}",
                    f"denoiser={models['sd']}",
                    f"output_dir={run}",
                    f"seed={seed}",
                    f"data.shards={shards}",
                    *watch,
                    *own[objective],
                ],
            ),
            run.with_suffix(".log"),
        )
        for (objective, seed), run in runs.items()
        if not (run / "tower" / MODEL_CARD).is_file()
    ]
    run_jobs(train, jobs)
    # with a validation split, RUN/tower is the step SELECT chose; the last step is exported beside it
    if watch:
        from dcr_mllm.enhance.export import export_step

        for run in runs.values():
            if not (run / "tower_last" / MODEL_CARD).is_file():
                export_step(run, last_step, run / "tower_last", force=True)
    last = {run: run / ("tower_last" if watch else "tower") for run in runs.values()}
    scored = [(base, base.parent / "world_metrics.json")] + [
        (last[run], run / "world_metrics.json") for run in runs.values()
    ]
    if watch:
        scored += [(run / "tower", run / "world_metrics_selected.json") for run in runs.values()]
    score_towers(scored, out / "eval", pairs, jobs)

    base_scores = json.loads((base.parent / "world_metrics.json").read_text())
    scores = {
        objective: [json.loads((runs[objective, seed] / "world_metrics.json").read_text()) for seed in range(seeds)]
        for objective in OBJECTIVES
    }
    results = summarize(base_scores, scores)
    if watch:
        chosen = {
            objective: [
                json.loads((runs[objective, seed] / "world_metrics_selected.json").read_text()) for seed in range(seeds)
            ]
            for objective in OBJECTIVES
        }
        results["selected"] = {
            **summarize(base_scores, chosen),
            "rule": SELECT,
            "last_step": last_step,
            "steps": {
                objective: [selected_step(runs[objective, seed]) for seed in range(seeds)] for objective in OBJECTIVES
            },
        }
    results["premise"] = json.loads((out / "premise.json").read_text())
    results["curves"] = curves(
        {objective: [runs[objective, seed] / "lora" / EVAL_FILE for seed in range(seeds)] for objective in OBJECTIVES}
    )
    results["setup"] = {
        "seeds": seeds,
        "config": str(config),
        "overrides": list(overrides),
        "per_objective": own,
        "world": spec.recipe(),
        "eval_images": eval_count,
        "pairs_per_attribute": pairs,
        "stage_one_images": shard_count,
        "validation": {"images": val_count, "overrides": watch},
    }
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "report.md").write_text(report(results))
    chart(results, out / "chart.png")
    if results["curves"]:
        curves_chart(results, out / "curves.png")
    return out


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
    """Write each ``(tower, result file)``'s world metrics on ``data`` where not yet written, in
    one-thread processes, ``jobs`` at a time."""
    evaluate = [
        (
            [
                *(sys.executable, "-m", "dcr_mllm.evaluation.tower.world_metrics"),
                *("--tower", str(tower), "--data", str(data), "--output", str(result), "--pairs", str(pairs)),
            ],
            result.with_suffix(".log"),
        )
        for tower, result in scored
        if not result.is_file()
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


def selected_step(run: Path) -> int:
    """The LoRA step ``SELECT`` chose for ``run`` (its validation curve's best, the earliest of ties)."""
    rows = [json.loads(line) for line in (run / "lora" / EVAL_FILE).read_text().splitlines()]
    return max(rows, key=lambda row: (row[f"eval/{SELECT}"], -row["step"]))["step"]


def curves(eval_files: dict[str, list[Path]]) -> dict:
    """``{objective: {metric: {"steps", "mean", "std"}}}`` of the headline metrics over the
    evaluated steps, from every seed's ``eval.jsonl``; {} when no run evaluated during training."""
    out = {}
    for objective, files in eval_files.items():
        if not all(f.is_file() for f in files):
            continue
        per_seed = [{row["step"]: row for row in map(json.loads, f.read_text().splitlines())} for f in files]
        steps = sorted(set.intersection(*(set(rows) for rows in per_seed)))
        out[objective] = {}
        for metric in HEADLINE:
            values = [[rows[step][f"eval/world/{metric}"] for rows in per_seed] for step in steps]
            out[objective][metric] = {
                "steps": steps,
                "mean": [statistics.fmean(v) for v in values],
                "std": [statistics.stdev(v) if len(v) > 1 else 0.0 for v in values],
            }
    return out


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


def summarize(base: dict[str, float], scores: dict[str, list[dict[str, float]]]) -> dict:
    """``metric_table``, each objective's effects over seeds (against base; each DCR form against
    naive too) and the paper's claims judged on the table."""
    table = metric_table(base, scores)
    return {"metrics": table, "effects": effects(table, contrasts(list(scores))), "checks": claims(table)}


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


def claims(table: dict) -> dict[str, bool]:
    """The paper's claims in the world, each true or false from the ablation's numbers."""
    checks = {}

    def gained(objective, metric, points):
        return (
            objective in table
            and metric in table[objective]
            and all(v >= points for v in table[objective][metric]["minus_base"])
        )

    base_class = table["base"]["class/probe"]["mean"]
    if "dcr" in table:
        checks["dcr (global) above base on every seed by >= 5 points: probe_global/claim_mean"] = gained(
            "dcr", "probe_global/claim_mean", 5
        )
        checks["dcr class probe within 2 points of base (mean)"] = (
            abs(table["dcr"]["class/probe"]["mean"] - base_class) <= 2
        )
        checks["dcr class probe above reconstruction (mean)"] = (
            "reconstruction" in table
            and table["dcr"]["class/probe"]["mean"] > table["reconstruction"]["class/probe"]["mean"]
        )
    if "dcr_tokens" in table:
        checks["dcr_tokens above base on every seed by >= 5 points: probe_layer/claim_mean"] = gained(
            "dcr_tokens", "probe_layer/claim_mean", 5
        )
    for objective in ("dcr", "dcr_tokens"):
        if objective in table:
            checks[f"{objective} loses at most 5 points of class zero-shot on every seed"] = all(
                v >= -5 for v in table[objective]["class/zero_shot"]["minus_base"]
            )
    return checks


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Reconstruction-only, naive and DCR from the same world base, same budget, several seeds."
    )
    parser.add_argument("--output", default="outputs/ablation")
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
    add_overrides(
        parser,
        "stage-one config overrides for every run (each run's models, data, output_dir, seed, objective and "
        "validation are the ablation's)",
        metavar="KEY=VALUE",
    )
    args = parse_intermixed(parser, argv)
    sizes = {"eval_count": 36, "pairs": 2, "shard_count": 64, "val_count": 24} if args.mini else {}
    spec = dataclasses.replace(MINI if args.mini else WorldSpec(), one_background=args.one_background)
    out = run_ablation(args.output, args.seeds, args.jobs, args.config, args.overrides, spec=spec, **sizes)
    print((out / "report.md").read_text(), end="")
    print(out)


if __name__ == "__main__":
    sys.exit(run_reporting(main))
