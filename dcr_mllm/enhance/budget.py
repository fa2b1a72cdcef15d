"""The budget curve: naive and DCR (global and tokens) at several LoRA budgets, each budget's
learning rate and step chosen on validation, over several seeds. Where, if anywhere, does
DCR's gain start?

The LoRA stage's rate is constant, so a run of the longest budget passes through every shorter
budget's run on its way (the same steps, bitwise): one run per objective, learning rate and seed
serves every budget. For a budget of B steps, each run's step is the best validation step at or
before B (``world_runs.SELECT``, the earliest of ties); each objective's learning rate is the one
whose runs' chosen steps score best on validation, mean over seeds. Only then are the chosen
steps' towers exported and scored on the evaluation set, beside the base tower's.

Writes ``OUT/<objective>/lr<lr>/seed<k>`` (stage one's own output, a checkpoint and a validation
score every ``eval.every`` LoRA steps), ``OUT/results.json`` and ``OUT/report.md``: per budget
and objective the chosen rate and steps, the metrics as mean +- std over seeds, and the effects
of DCR against base and against naive with their 95 % intervals over seeds. Finished pieces are
skipped, so a killed run resumes where it stopped.

    python -m dcr_mllm.enhance.budget --output outputs/budget --seeds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from dcr_mllm.arguments import OneLineParser, parse_intermixed, run_reporting
from dcr_mllm.config import load_config
from dcr_mllm.enhance.ablation_report import effect_table
from dcr_mllm.enhance.config import EnhanceConfig
from dcr_mllm.enhance.watch import EVAL_FILE
from dcr_mllm.enhance.world_runs import (
    EFFECT_METRICS,
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
from dcr_mllm.training.checkpoints import is_finished
from dcr_mllm.world.models import WorldSpec
from dcr_mllm.world.prepare import EVAL_COUNT, SHARD_COUNT, VAL_COUNT

OBJECTIVES = ("naive", "dcr", "dcr_tokens")
MULTIPLES = (1, 4, 16)  # of the config's LoRA steps
LEARNING_RATES = (3e-4, 1e-3)


def run_budget(
    output: str | Path,
    seeds: int = 3,
    jobs: int = 2,
    multiples: tuple[int, ...] = MULTIPLES,
    lrs: tuple[float, ...] = LEARNING_RATES,
    objectives: tuple[str, ...] = OBJECTIVES,
    config: str | Path | None = None,
    overrides: list[str] = (),
    spec: WorldSpec | None = None,
    world_root: str | Path | None = None,
    eval_count: int = EVAL_COUNT,
    pairs: int = 30,
    shard_count: int = SHARD_COUNT,
    val_count: int = VAL_COUNT,
) -> Path:
    """Train what is missing, choose, export and score; write ``OUT/results.json`` and ``report.md``.
    ``multiples`` are budgets in the config's LoRA steps; the other arguments are the ablation's."""
    if seeds < 1 or jobs < 1 or not multiples or min(multiples) < 1 or not lrs or min(lrs) <= 0:
        raise DcrError(
            f"--seeds {seeds}, --jobs {jobs}, --multiples {list(multiples)}, --lrs {list(lrs)}: "
            "seeds and jobs at least 1, multiples positive integers, learning rates positive"
        )
    unknown = set(objectives) - set(VARIANTS)
    if unknown or not objectives:
        raise DcrError(f"--objectives {sorted(unknown) or '(none)'}: choose from {', '.join(VARIANTS)}")
    config = stage_one_config(config)
    cfg = load_config(EnhanceConfig, config, overrides)
    lora, every = cfg.lora_stage, cfg.eval.every
    if not every:
        raise DcrError("the budget curve chooses each step on validation: set eval.every (the world config's is 20)")
    if lora.scheduler != "constant" or (lora.warmup_ratio and not lora.warmup_steps):
        raise DcrError(
            "the budget curve reads every budget from one run, which needs a LoRA rate that does not depend on "
            "max_steps: lora_stage.scheduler=constant, warm-up (if any) in warmup_steps"
        )
    multiples = tuple(sorted(set(multiples)))
    budgets = {m: m * lora.max_steps for m in multiples}
    longest = budgets[multiples[-1]]
    spec = spec or WorldSpec()
    out = Path(output).resolve()
    world, base = prepare_runs(out, spec, world_root, shard_count, eval_count, val_count)

    runs = {
        (objective, lr, seed): out / objective / f"lr{lr:g}" / f"seed{seed}"
        for objective in objectives
        for lr in lrs
        for seed in range(seeds)
    }
    own = {objective: objective_overrides(config, overrides, VARIANTS[objective]) for objective in objectives}
    watch = validation_overrides(config, overrides, world["val"], pairs)
    train = [
        (
            train_args(
                config,
                overrides,
                [
                    f"tower={world['world-clip']}",
                    f"denoiser={world['world-sd']}",
                    f"output_dir={run}",
                    f"seed={seed}",
                    f"data.shards={world['shards']}",
                    *watch,
                    *own[objective],
                    f"lora_stage.max_steps={longest}",
                    f"lora_stage.lr={lr}",
                    f"lora_stage.save_every={every}",
                    "lora_stage.keep_last=0",  # every validated step stays exportable
                ],
            ),
            run.with_suffix(".log"),
        )
        for (objective, lr, seed), run in runs.items()
        if not is_finished(run / "lora", longest)
    ]
    run_jobs(train, jobs)

    curves = {key: validation_curve(run) for key, run in runs.items()}
    chosen = {
        (objective, multiple): choose(
            {lr: [curves[objective, lr, seed] for seed in range(seeds)] for lr in lrs}, budgets[multiple]
        )
        for objective in objectives
        for multiple in multiples
    }
    towers = {}  # (objective, multiple, seed) -> the exported tower of its chosen step
    for (objective, multiple), choice in chosen.items():
        for seed, step in enumerate(choice["steps"]):
            towers[objective, multiple, seed] = export(runs[objective, choice["lr"], seed], step)
    scored = [(base, base.parent / "world_metrics.json")] + [
        (tower, tower.parent / f"world_metrics_{tower.name}.json") for tower in set(towers.values())
    ]
    score_towers(scored, out / "eval", pairs, jobs)

    def scores(tower: Path) -> dict[str, float]:
        return json.loads((tower.parent / f"world_metrics_{tower.name}.json").read_text())

    base_scores = json.loads((base.parent / "world_metrics.json").read_text())
    results = {"budgets": {}, "setup": {}}
    for multiple in multiples:
        per_objective = {o: [scores(towers[o, multiple, seed]) for seed in range(seeds)] for o in objectives}
        table = metric_table(base_scores, per_objective)
        results["budgets"][str(multiple)] = {
            "lora_steps": budgets[multiple],
            "chosen": {o: chosen[o, multiple] for o in objectives},
            "metrics": table,
            "effects": effects(table, contrasts(list(objectives))),
        }
    results["setup"] = {
        "seeds": seeds,
        "multiples": list(multiples),
        "lora_steps_1x": lora.max_steps,
        "learning_rates": list(lrs),
        "objectives": list(objectives),
        "rule": SELECT,
        "eval_every": every,
        "config": str(config),
        "overrides": list(overrides),
        "per_objective": own,
        "world": spec.recipe(),
        "eval_images": eval_count,
        "pairs_per_attribute": pairs,
        "stage_one_images": shard_count,
        "validation_images": val_count,
    }
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "report.md").write_text(report(results))
    return out


def validation_curve(run: Path) -> dict[int, float]:
    """``{step: SELECT's value}`` over the steps ``run`` scored on the validation split."""
    rows = [json.loads(line) for line in (run / "lora" / EVAL_FILE).read_text().splitlines()]
    return {row["step"]: row[f"eval/{SELECT}"] for row in rows}


def choose(curves_by_lr: dict[float, list[dict[int, float]]], budget: int) -> dict:
    """Within ``budget`` steps: each run's best validated step (the earliest of ties), and the
    learning rate whose runs' best steps score highest, mean over seeds (the lower rate of ties).

    Args:
        curves_by_lr: per learning rate, each seed's ``{step: validation value}``.
        budget: the last LoRA step this budget allows.
    """
    best = {}
    for lr, curves in curves_by_lr.items():
        steps = []
        for curve in curves:
            allowed = [step for step in curve if step <= budget]
            if not allowed:
                raise DcrError(f"no validated step within {budget} LoRA steps: lower eval.every")
            steps.append(max(allowed, key=lambda step: (curve[step], -step)))
        best[lr] = {"steps": steps, "validation": statistics.fmean(c[s] for c, s in zip(curves, steps))}
    lr = max(sorted(best), key=lambda rate: best[rate]["validation"])  # max keeps the first (lowest) of ties
    return {"lr": lr, "steps": best[lr]["steps"], "validation": {str(r): v["validation"] for r, v in best.items()}}


def export(run: Path, step: int) -> Path:
    """``run/tower_step_<step>``, exported once from the run's checkpoint of that LoRA step."""
    from dcr_mllm.enhance.export import MODEL_CARD, export_step

    tower = run / f"tower_step_{step}"
    if not (tower / MODEL_CARD).is_file():
        export_step(run, step, tower, force=True)
    return tower


def report(results: dict) -> str:
    setup, budgets = results["setup"], results["budgets"]
    lines = [
        "# The budget curve in the world",
        "",
        f"{setup['seeds']} seed(s); LoRA budgets {', '.join(f'{m}x' for m in setup['multiples'])} of "
        f"{setup['lora_steps_1x']} steps; learning rates {', '.join(f'{lr:g}' for lr in setup['learning_rates'])}. "
        f"Per budget, each run's step is its best validation step within the budget (`{setup['rule']}`), and each "
        "objective's rate the one whose chosen steps score best on validation (mean over seeds); the towers of "
        "those steps are scored on the evaluation set. Mean +- std over seeds (percent).",
        "",
        "| budget | LoRA steps | objective | rate | chosen steps | "
        + " | ".join(f"`{m}`" for m in EFFECT_METRICS)
        + " |",
        "|---|---:|---|---:|---|" + "---:|" * len(EFFECT_METRICS),
    ]
    for multiple, row in budgets.items():
        base = row["metrics"]["base"]
        lines.append(
            f"| {multiple}x | {row['lora_steps']} | base | | | "
            + " | ".join(f"{base[m]['mean']:.1f}" for m in EFFECT_METRICS)
            + " |"
        )
        for objective, choice in row["chosen"].items():
            cells = [
                f"{row['metrics'][objective][m]['mean']:.1f} +- {row['metrics'][objective][m]['std']:.1f}"
                for m in EFFECT_METRICS
            ]
            lines.append(
                f"| {multiple}x | {row['lora_steps']} | {objective} | {choice['lr']:g} | "
                f"{', '.join(map(str, choice['steps']))} | " + " | ".join(cells) + " |"
            )
    for multiple, row in budgets.items():
        lines += effect_table(row["effects"], f"## Effects over seeds at {multiple}x ({row['lora_steps']} LoRA steps)")
    lines += ["", "## Where DCR's gain starts", "", *gain_start(results)]
    return "\n".join(lines) + "\n"


def gain_start(results: dict) -> list[str]:
    """Per DCR form, the first budget where it beats both base and naive on its claimed metric
    (the interval above 0), or that none does."""
    claimed = {"dcr": "probe_global/claim_mean", "dcr_tokens": "probe_layer/claim_mean"}
    budgets, lines = results["budgets"], []
    for objective, metric in claimed.items():
        if objective not in results["setup"]["objectives"]:
            continue
        detected = [
            multiple
            for multiple, row in budgets.items()
            if all(
                above_zero(row["effects"].get(f"{objective} - {against}: {metric}")) for against in ("base", "naive")
            )
        ]
        lines.append(
            f"- {objective} on `{metric}`: "
            + (
                f"above both base and naive (interval above 0) from {detected[0]}x"
                if detected
                else f"above base and naive at no budget up to {results['setup']['multiples'][-1]}x"
            )
        )
    return lines


def above_zero(effect: dict | None) -> bool:
    """Whether an effect was measured and its interval lies above 0."""
    return effect is not None and effect["ci"][0] is not None and effect["ci"][0] > 0


def comma_list(kind, example: str):
    """An argparse type: ``"1,4,16"`` -> ``(1, 4, 16)``."""

    def parse(text: str) -> tuple:
        try:
            return tuple(kind(item) for item in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: give comma-separated values, e.g. {example}") from None

    return parse


def main(argv: list[str] | None = None) -> None:
    parser = OneLineParser(
        description="Naive and DCR at several LoRA budgets, rate and step chosen on validation, several seeds."
    )
    add_world_run_arguments(parser, "outputs/budget", "stage-one config overrides for every run")
    parser.add_argument(
        "--multiples",
        type=comma_list(int, "1,4,16"),
        default=MULTIPLES,
        help="budgets in multiples of the config's LoRA steps, comma-separated (default 1,4,16)",
    )
    parser.add_argument(
        "--lrs",
        type=comma_list(float, "3e-4,1e-3"),
        default=LEARNING_RATES,
        help="LoRA learning rates (default 3e-4,1e-3)",
    )
    parser.add_argument(
        "--objectives",
        type=comma_list(str, "naive,dcr"),
        default=OBJECTIVES,
        help=f"comma-separated, of {', '.join(VARIANTS)} (default {','.join(OBJECTIVES)})",
    )
    args = parse_intermixed(parser, argv)
    spec, sizes = world_of(args)
    out = run_budget(
        args.output,
        args.seeds,
        args.jobs,
        args.multiples,
        args.lrs,
        args.objectives,
        args.config,
        args.overrides,
        spec=spec,
        **sizes,
    )
    print((out / "report.md").read_text(), end="")
    print(out)


if __name__ == "__main__":
    sys.exit(run_reporting(main))
