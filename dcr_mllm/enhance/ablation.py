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

import json
import statistics
import sys
from pathlib import Path

from dcr_mllm.arguments import OneLineParser, parse_intermixed, run_reporting
from dcr_mllm.config import load_config
from dcr_mllm.enhance.ablation_report import HEADLINE, chart, curves_chart, report
from dcr_mllm.enhance.config import EnhanceConfig
from dcr_mllm.enhance.export import MODEL_CARD
from dcr_mllm.enhance.watch import EVAL_FILE
from dcr_mllm.enhance.world_runs import (
    SELECT,
    VARIANTS,
    add_world_run_arguments,
    contrasts,
    effects,
    metric_table,
    objective_overrides,
    prepare_runs,
    run_jobs,
    score_towers,
    stage_one_config,
    train_args,
    validation_overrides,
    world_of,
)
from dcr_mllm.errors import DcrError
from dcr_mllm.evaluation.analysis.premise import measure_premise
from dcr_mllm.world.models import WorldSpec
from dcr_mllm.world.prepare import EVAL_COUNT, SHARD_COUNT, VAL_COUNT

OBJECTIVES = tuple(VARIANTS)


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
    config = stage_one_config(config)
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


def summarize(base: dict[str, float], scores: dict[str, list[dict[str, float]]]) -> dict:
    """``metric_table``, each objective's effects over seeds (against base; each DCR form against
    naive too) and the paper's claims judged on the table."""
    table = metric_table(base, scores)
    return {"metrics": table, "effects": effects(table, contrasts(list(scores))), "checks": claims(table)}


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
    parser = OneLineParser(
        description="Reconstruction-only, naive and DCR from the same world base, same budget, several seeds."
    )
    add_world_run_arguments(
        parser,
        "outputs/ablation",
        "stage-one config overrides for every run (each run's models, data, output_dir, seed, objective and "
        "validation are the ablation's)",
    )
    args = parse_intermixed(parser, argv)
    spec, sizes = world_of(args)
    out = run_ablation(args.output, args.seeds, args.jobs, args.config, args.overrides, spec=spec, **sizes)
    print((out / "report.md").read_text(), end="")
    print(out)


if __name__ == "__main__":
    sys.exit(run_reporting(main))
