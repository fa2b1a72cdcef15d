"""The end-of-pipeline summary: loss curves of every training stage, the tower and MLLM
comparisons, and where each artefact is. Reads only what the stages wrote."""

from __future__ import annotations

from pathlib import Path

from dcr_mllm.errors import DcrError
from dcr_mllm.evaluation.analysis.probe_vs_llava import (
    learning_targets,
    plot_probe_vs_llava,
    probe_vs_llava,
    probe_vs_llava_table,
)
from dcr_mllm.evaluation.analysis.provenance import (
    SYNTHETIC_HEADING,
    mark_synthetic,
    mllm_synthetic,
    tower_synthetic,
)
from dcr_mllm.evaluation.analysis.stale import check_current
from dcr_mllm.evaluation.freshness import synthetic_note
from dcr_mllm.io import atomic_path
from dcr_mllm.strict import loads_json, read_json, read_text, read_yaml


def loss_points(stage_dir: Path) -> dict[int, float] | None:
    """Step -> loss from ``stage_dir/metrics.jsonl`` (None when the stage logged nothing)."""
    metrics = stage_dir / "metrics.jsonl"
    if not metrics.is_file():
        return None
    points = {}
    for number, line in enumerate(
        read_text(metrics).splitlines(), start=1
    ):  # a resumed run logs some steps twice: keep the last
        record = loads_json(line, f"{metrics} line {number}")
        try:
            points[int(record["step"])] = float(record["loss"])
        except (ValueError, TypeError, KeyError) as err:
            raise DcrError(
                f"{metrics} line {number} is not a metrics record with step and loss; was the file edited or cut short?"
            ) from err
    return points


def held_out_points(stage_dir: Path) -> dict[int, float]:
    """Step -> held-out loss (``eval/loss``, the LLaVA stages' ``eval_every``) where it was logged."""
    metrics = stage_dir / "metrics.jsonl"
    rows = (
        [loads_json(line, f"{metrics} line {n}") for n, line in enumerate(read_text(metrics).splitlines(), 1)]
        if metrics.is_file()
        else []
    )
    return {int(row["step"]): float(row["eval/loss"]) for row in rows if "eval/loss" in row}


def plot_loss(stage_dir: Path, points: dict[int, float] | None = None) -> Path | None:
    """``stage_dir/loss.png`` from its metrics.jsonl (None when the stage logged nothing)."""
    points = loss_points(stage_dir) if points is None else points
    if points is None:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = sorted(points)
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(steps, [points[s] for s in steps], marker="." if len(steps) < 50 else None, label="training")
    held = held_out_points(stage_dir)
    if held:
        ax.plot(sorted(held), [held[s] for s in sorted(held)], marker="o", label="held-out")
        ax.legend(fontsize=8)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title(f"{stage_dir.parent.name}/{stage_dir.name}")
    fig.tight_layout()
    out = stage_dir / "loss.png"
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return out


def summarize(runs: dict[str, Path], tower_eval: Path, mllm_eval: Path, chart: Path | None = None) -> str:
    """Markdown: tower table, MLLM table, loss curves and artefacts of the given training runs;
    in the world also the tower's probe beside its LLaVA per attribute, drawn to ``chart``
    (default ``MLLM_EVAL/report/probe_vs_llava.png``).

    Args:
        runs: training run directories by name (``enhance``, ...); each stage's loss curve is drawn.
        tower_eval: the tower evaluation's output directory (``evaluate-tower``).
        mllm_eval: the MLLM evaluation's output directory (its ``report/`` is read).
        chart: where the probe-beside-LLaVA chart is drawn; None: the default above.
    """
    check_current(tower_eval, mllm_eval)  # no table of a tower or LLaVA that changed since it was scored
    lines = ["# dcr-mllm pipeline summary", ""]
    report = mllm_eval / "report" / "report.md"
    significance = mllm_eval / "report" / "world_significance.json"
    effects = _tower_effect_tables(significance)
    if effects:
        lines += [f"**{effects[0]}**", ""]
    lines += [*tower_tables(tower_eval), ""]
    if "enhance" in runs and (runs["enhance"] / "config.yaml").is_file():
        seed = read_yaml(runs["enhance"] / "config.yaml").get("seed")
        lines += [
            f"The enhanced tower is one stage-one run (seed {seed}, {runs['enhance'] / 'config.yaml'}); stage one's spread over "
            "seeds is what the ablation measures (`bash stages/ablation.sh`: every objective over several seeds, "
            "`outputs/ablation/report.md`).",
            "",
        ]
    world = _world_llava_tables(significance)
    suite = read_text(report).strip() if not world and report.is_file() else "(not run)"
    made_up = mllm_synthetic(mllm_eval)
    marked, note = (SYNTHETIC_HEADING, synthetic_note(made_up)) if made_up else ("", "")
    _check_runs(runs)  # after every table is read, before the first chart is drawn
    if world:
        lines += [
            f"## LLaVA in the world (lmms-eval `world_local` or `world_local_open`, accuracy %){marked}",
            "",
            *([note, ""] if note else []),
            *effects[1:],
            *world,
            "",
        ]
        pairs = probe_vs_llava(tower_eval / "world" / "results.json", significance)
        if pairs:
            chart = chart or mllm_eval / "report" / "probe_vs_llava.png"
            lines += [
                "## Does what the tower holds reach its LLaVA? (%)",
                "",
                "Per attribute, the tower's feature-layer probe (layer −2, what the LLaVA reads) beside the LLaVA's "
                f"accuracy on that attribute's open questions (which ask for the value, as the probe reads it); chart: {plot_probe_vs_llava(pairs, chart)}",
                "",
            ]
            lines += [*probe_vs_llava_table(pairs), ""]
            lines += [*learning_targets(pairs, read_json(significance)["accuracy"]), ""]
    else:
        lines += [
            f"## LLaVA on the lmms-eval suite{marked}",
            "",
            *([note, ""] if note and note not in suite else []),
            suite,
            "",
        ]
    lines += ["## Training stages (loss curves)", ""]
    stages = []  # everything read and checked before the first curve is drawn
    for name, run in runs.items():
        for stage_dir in sorted(p.parent for p in run.glob("*/train_state.json")):
            state = read_json(stage_dir / "train_state.json")
            if not isinstance(state, dict) or not isinstance(state.get("step"), int):
                raise DcrError(
                    f"{stage_dir / 'train_state.json'} has no step count; it was not written by a training stage"
                )
            stages.append((name, stage_dir, state["step"], loss_points(stage_dir)))
    for name, stage_dir, step, points in stages:
        watched = stage_dir / "eval.png"  # the tower evaluated during training (enhance.watch)
        lines.append(
            f"- {name}/{stage_dir.name}: {step} steps, {plot_loss(stage_dir, points)}"
            + (f", validation curves {watched}" if watched.is_file() else "")
        )
    lines += ["", "## Artefacts", ""]
    for name, run in runs.items():
        for artefact in ("tower", "model"):
            if (run / artefact).is_dir():
                lines.append(f"- {name} {artefact}: {run / artefact}")
    lines += [f"- tower reports: {tower_eval}", f"- MLLM reports: {mllm_eval / 'report'}"]
    return "\n".join(lines) + "\n"


def _check_runs(runs: dict[str, Path]) -> None:
    """Every training run named must be a folder with something in it."""
    for name, run in runs.items():
        problem = "no such folder" if not run.is_dir() else "the folder is empty" if not any(run.iterdir()) else ""
        if problem:
            raise DcrError(
                f"--run {name}={run}: {problem}; give a training run's output directory, e.g. --run enhance=outputs/enhance"
            )


def tower_tables(tower_eval: str | Path) -> list[str]:
    """Markdown: the benchmark table, and the world's tables where the world was scored; a table
    computed on generated data says so (``provenance``)."""
    tower_eval = Path(tower_eval)
    world = tower_eval / "world" / "results.json"
    if world.is_file():
        return mark_synthetic(_world_tables(world), {"world": m} if (m := tower_synthetic(tower_eval, "world")) else {})
    made_up = {
        b: made
        for b in ("mmvp-vlm", "classification", "fine-grained")
        if (tower_eval / b / "results.json").is_file() and (made := tower_synthetic(tower_eval, b))
    }
    return mark_synthetic(["## Towers (MMVP-VLM, probes; %)", "", *_tower_table(tower_eval, made_up)], made_up)


def _world_tables(results_file: Path) -> list[str]:
    """The headline metrics per tower, then each attribute's probes and pairs per tower."""
    from dcr_mllm.world.scenes import CLASS, FINE_ATTRIBUTES

    results = read_json(results_file)
    towers = list(results)
    try:

        def cells(metric: str) -> str:
            return " | ".join(f"{results[t][metric]:.1f}" for t in towers)

        headline = [
            ("class zero-shot (D-Ability)", "class/zero_shot"),
            ("class linear probe (D-Ability)", "class/probe"),
            ("fine attributes, global-embedding probe (mean)", "probe_global/fine_mean"),
            ("fine attributes, feature-layer probe (mean)", "probe_layer/fine_mean"),
            ("world pairs, MMVP-VLM rule (mean)", "pairs/mean"),
        ]
        lines = [
            "## Towers in the world (%)",
            "",
            "| metric | " + " | ".join(towers) + " |",
            "|---|" + "---:|" * len(towers),
        ]
        lines += [f"| {label} | {cells(metric)} |" for label, metric in headline]
        joined = " / ".join(towers)
        lines += [
            "",
            f"Per attribute, {joined} (chance: a probe 1 / number of values, a pair 25):",
            "",
            "| attribute | global probe | feature-layer probe | pairs |",
            "|---|---:|---:|---:|",
        ]
        for attribute in (CLASS, *FINE_ATTRIBUTES):
            per_kind = [
                " / ".join(f"{results[t][f'{kind}/{attribute}']:.1f}" for t in towers)
                if f"{kind}/{attribute}" in results[towers[0]]
                else "-"
                for kind in ("probe_global", "probe_layer", "pairs")
            ]
            lines.append(f"| {attribute} | " + " | ".join(per_kind) + " |")
    except (KeyError, TypeError, ValueError) as err:
        raise DcrError(
            f"{results_file} lacks world metrics for every tower; re-run dcr-mllm eval-tower --benchmark world"
        ) from err
    return lines


def _world_llava_tables(significance_file: Path) -> list[str]:
    """Each model's ``world_local`` accuracy with its 95 % interval overall, per attribute, per kind
    and per attribute and kind, and each pair's difference with McNemar's p (empty when the world
    task was not scored)."""
    from dcr_mllm.world.conversations import KINDS
    from dcr_mllm.world.scenes import WORLD_VALUES

    if not significance_file.is_file():
        return []
    data = read_json(significance_file)
    try:
        accuracy, paired = data["accuracy"], data["paired"]
        models = list(accuracy)
        header = (
            "| questions | "
            + " | ".join(f"{m} [95 % interval]" for m in models)
            + "".join(f" | {p} (points, p)" for p in paired)
            + " |"
        )
        rule = "|---|" + "---:|" * (len(models) + len(paired))

        def row(label: str, group: str) -> str | None:
            if group not in accuracy[models[0]]:
                return None
            cells = [
                f"{a['accuracy']:.1f} [{a['low']:.1f}, {a['high']:.1f}]" for a in (accuracy[m][group] for m in models)
            ]
            for test in paired.values():
                t = test[group]
                cells.append(
                    f"{'**' if t['significant'] else ''}{t['difference']:+.1f}{'**' if t['significant'] else ''} (p={t['p']:.2g})"
                )
            return f"| {label} | " + " | ".join(cells) + " |"

        summary_groups = [("all", "all"), *((a, a) for a in WORLD_VALUES), *((k.replace("_", "/"), k) for k in KINDS)]
        lines = [header, rule] + [r for r in (row(label, g) for label, g in summary_groups) if r]
        n = accuracy[models[0]]["all"]["n"]
        cell = next(
            (
                accuracy[models[0]][f"{a}/{k}"]["n"]
                for a in WORLD_VALUES
                for k in KINDS
                if f"{a}/{k}" in accuracy[models[0]]
            ),
            0,
        )
        lines += [
            "",
            f"{n} questions, {cell} per attribute and kind; a difference in bold is significant (McNemar's exact test, "
            "p < 0.05, on the questions both models answered: it compares two trained models, not two towers). Chance: yes/no and "
            "choice 50, open 1 / number of values.",
            "",
            "Per attribute and kind:",
            "",
            header,
            rule,
        ]
        lines += [
            r for r in (row(f"{a} / {k.replace('_', '/')}", f"{a}/{k}") for a in WORLD_VALUES for k in KINDS) if r
        ]
    except (KeyError, TypeError, IndexError) as err:
        raise DcrError(
            f"{significance_file} is not a world comparison (accuracy and paired tables); re-run dcr-mllm eval-mllm"
        ) from err
    return lines


def _tower_effect_tables(significance_file: Path) -> list[str]:
    """The verdict on the first pair of towers in words, then per question group each tower's
    per-seed accuracies, their means, and the effect judged over training runs (Welch's t-test,
    ``seed_effect``); empty without a world comparison."""
    if not significance_file.is_file():
        return []
    data = read_json(significance_file)
    towers = (
        data.get("towers") if isinstance(data, dict) else None
    )  # a file that is no comparison is refused by _world_llava_tables
    if not isinstance(towers, dict) or not towers:
        return []
    try:
        return _effect_lines(*next(iter(towers.items())))
    except (KeyError, TypeError, ValueError, IndexError) as err:
        raise DcrError(
            f"{significance_file} holds no tower comparison over seeds ('towers'); re-run dcr-mllm eval-mllm"
        ) from err


def _effect_lines(pair: str, effects: dict) -> list[str]:
    from dcr_mllm.evaluation.analysis.seed_effect import verdict
    from dcr_mllm.world.scenes import WORLD_VALUES

    other, base = pair.split(" vs ")
    lines = [
        verdict(effects, base, other),
        "### The tower's effect over training runs",
        "",
        f"Each LLaVA training run (seed) is one unit: per question group, each tower's accuracy per seed, their mean ± std, "
        f"and {other} − {base} with its 95 % interval, Welch's p and the smallest effect N seeds detect with 80 % power "
        "(`evaluation/analysis/seed_effect.py`). The McNemar tests below compare two trained models, not two towers.",
        "",
        f"| questions | {base}: per seed | {other}: per seed | {base}: mean ± std | {other}: mean ± std | {other} − {base} [95 %] | p | detectable |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]

    def spread(mean: float, std: float | None) -> str:
        return f"{mean:.1f}" + (f" ± {std:.1f}" if std is not None else "")

    for group in ["all", *WORLD_VALUES]:
        e = effects.get(group)
        if e is None:
            continue
        tested = e["p"] is not None
        effect = f"{'**' if e['significant'] else ''}{e['effect']:+.1f}{'**' if e['significant'] else ''}"
        lines.append(
            f"| {group} | {' / '.join(f'{a:.1f}' for a in e['base'])} | {' / '.join(f'{a:.1f}' for a in e['other'])} | "
            f"{spread(e['base_mean'], e['base_std'])} | {spread(e['other_mean'], e['other_std'])} | "
            + (
                f"{effect} [{e['low']:+.1f}, {e['high']:+.1f}] | {e['p']:.2g} | {e['detectable']:.1f} |"
                if tested
                else f"{effect} (one run per tower: not testable) | - | - |"
            )
        )
    return [*lines, ""]


def _tower_table(tower_eval: Path, made_up: dict[str, str]) -> list[str]:
    """One row per metric, a column per tower; a row computed on generated data is marked "(synthetic)"."""
    rows = [
        ("MMVP-VLM average", "mmvp-vlm", "average"),
        ("zero-shot top-1", "classification", "zero_shot_top1"),
        ("linear-probe top-1", "classification", "linear_probe_top1"),
        ("fine-grained pairs average", "fine-grained", "average"),
    ]
    tables = {
        b: read_json(tower_eval / b / "results.json") for _, b, _ in rows if (tower_eval / b / "results.json").is_file()
    }
    if not tables:
        return ["(not run)"]
    towers = list(next(iter(tables.values())))
    lines = ["| metric | " + " | ".join(towers) + " |", "|---|" + "---:|" * len(towers)]
    for label, benchmark, metric in rows:
        if benchmark in tables:
            try:
                mark = " (synthetic)" if benchmark in made_up else ""
                cells = " | ".join(f"{tables[benchmark][t][metric]:.1f}" for t in towers)
                lines.append(f"| {label}{mark} | {cells} |")
            except (KeyError, TypeError, ValueError) as err:
                raise DcrError(
                    f"{tower_eval / benchmark / 'results.json'} lacks {metric} for every tower; re-run dcr-mllm eval-tower"
                ) from err
    return lines
