"""The world ablation's report and charts: ``OUT/report.md`` (the premise, every metric per
objective, each seed against base, the step chosen on validation, the validation curves and the
paper's claims), ``OUT/chart.png`` and ``OUT/curves.png``, drawn from ``results.json``'s content.
Apart from ``ablation``, which runs the ablation, so that each module stays within the line budget."""

from __future__ import annotations

from pathlib import Path

from dcr_mllm.evaluation.analysis.premise import premise_report
from dcr_mllm.io import atomic_path
from dcr_mllm.world.scenes import FINE_ATTRIBUTES

#: the metrics the report, its charts and the validation curves (``ablation.curves``) show first
HEADLINE = (
    "probe_global/claim_mean",
    "probe_layer/claim_mean",
    "probe_global/fine_mean",
    "class/probe",
    "class/zero_shot",
    "pairs/mean",
    "probe_layer/fine_mean",
)


def report(results: dict) -> str:
    table, objectives = results["metrics"], list(results["metrics"])
    metrics = [*HEADLINE, *(m for m in table["base"] if m not in HEADLINE)]
    premise = premise_report(results["premise"]) if "premise" in results else []
    lines = [
        "# Ablation in the world",
        "",
        *("#" + line if line.startswith("# ") else line for line in premise),
        "",
        "## The objectives",
        "",
        f"{results['setup']['seeds']} seed(s) per objective; base is one tower. Mean +- std over seeds (percent); "
        "`probe_global` = linear probe on the global embedding, `probe_layer` = on the mean of feature layer -2; "
        "`fine_mean` = mean over " + ", ".join(FINE_ATTRIBUTES) + ".",
        "",
        "| metric | " + " | ".join(objectives) + " |",
        "|---" * (len(objectives) + 1) + "|",
    ]
    for metric in metrics:
        cells = [
            f"{table[o][metric]['mean']:.1f}" + (f" +- {table[o][metric]['std']:.1f}" if o != "base" else "")
            for o in objectives
        ]
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    lines += ["", "## Each seed minus base", "", "| objective | metric | per seed |", "|---|---|---|"]
    for objective in objectives[1:]:
        for metric in HEADLINE:
            lines.append(
                f"| {objective} | {metric} | "
                + ", ".join(f"{v:+.1f}" for v in table[objective][metric]["minus_base"])
                + " |"
            )
    if results.get("effects"):
        lines += effect_table(results["effects"])
    if results.get("selected"):
        lines += selection_table(results)
    if results.get("curves"):
        lines += curve_tables(results["curves"])
    if results["checks"]:
        lines += ["", "## What the world is for", ""] + [
            f"- {'yes' if ok else 'NO'}: {name}" for name, ok in results["checks"].items()
        ]
    return "\n".join(lines) + "\n"


def effect_table(effects: dict, heading: str = "## Effects over seeds") -> list[str]:
    """Each contrast's effect over seeds with its 95 % interval, p and smallest detectable effect."""
    lines = [
        "",
        heading,
        "",
        "Points; 95 % interval over seeds (Welch; against base, one tower, a one-sample t test); detectable: the "
        "smallest effect found with 80 % power at this spread. An effect is detected where its interval excludes 0.",
        "",
        "| contrast | metric | effect | 95 % interval | p | detectable |",
        "|---|---|---:|---|---:|---:|",
    ]
    for name, effect in effects.items():
        contrast, metric = name.split(": ")
        low, high = effect["ci"]
        interval = f"[{low:+.1f}, {high:+.1f}]" if low is not None else "(one seed)"
        p = f"{effect['p']:.2g}" if effect["p"] is not None else ""
        detectable = f"{effect['detectable']:.1f}" if effect["detectable"] is not None else ""
        lines.append(f"| {contrast} | `{metric}` | {effect['effect']:+.1f} | {interval} | {p} | {detectable} |")
    return lines


def selection_table(results: dict) -> list[str]:
    """The headline metrics at the last step beside those at each run's step chosen on the
    validation split by one rule (mean +- std over seeds), and the chosen steps."""
    last, chosen = results["metrics"], results["selected"]
    objectives = [o for o in last if o != "base"]
    lines = [
        "",
        "## The last step and the step chosen on validation",
        "",
        f"Each run's LoRA step chosen by one rule for every objective: the highest `{chosen['rule']}` on the validation split "
        f"(never the evaluation set above), against its last step ({chosen['last_step']}). Mean +- std over seeds (percent).",
        "",
        "| metric | " + " | ".join(f"{o}: last | {o}: chosen" for o in objectives) + " |",
        "|---" * (2 * len(objectives) + 1) + "|",
    ]
    for metric in HEADLINE:
        cells = [
            f"{t[o][metric]['mean']:.1f} +- {t[o][metric]['std']:.1f}"
            for o in objectives
            for t in (last, chosen["metrics"])
        ]
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    lines.append(
        "| chosen step per seed | "
        + " | ".join(cell for o in objectives for cell in ("", ", ".join(map(str, chosen["steps"][o]))))
        + " |"
    )
    return lines


def curve_tables(curves_by_objective: dict) -> list[str]:
    """One table per headline metric: the validation value (mean +- std over seeds) at each
    evaluated LoRA step, per objective, and the step where the mean peaks."""
    objectives = list(curves_by_objective)
    lines = [
        "",
        "## Validation curves during training",
        "",
        "The world's validation set (its own seed, not the evaluation set above) scored every `eval.every` LoRA steps; "
        "step 0 is the base tower. Mean +- std over seeds (percent). `OUT/curves.png` draws them.",
    ]
    for metric in HEADLINE:
        steps = curves_by_objective[objectives[0]][metric]["steps"]
        lines += [
            "",
            f"**{metric}**",
            "",
            "| step | " + " | ".join(objectives) + " |",
            "|---:" * (len(objectives) + 1) + "|",
        ]
        for i, step in enumerate(steps):
            cells = [
                f"{c[metric]['mean'][i]:.1f} +- {c[metric]['std'][i]:.1f}" if i < len(c[metric]["steps"]) else ""
                for c in (curves_by_objective[o] for o in objectives)
            ]
            lines.append(f"| {step} | " + " | ".join(cells) + " |")
        peaks = [
            c[metric]["steps"][max(range(len(c[metric]["mean"])), key=lambda i: (c[metric]["mean"][i], -i))]
            for c in (curves_by_objective[o] for o in objectives)
        ]
        lines.append("| peak at step | " + " | ".join(str(p) for p in peaks) + " |")
    return lines


def curves_chart(results: dict, path: Path) -> None:
    """One panel per headline metric: each objective's validation mean over steps, +- std shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(HEADLINE), figsize=(3.3 * len(HEADLINE), 3.2), squeeze=False)
    for ax, metric in zip(axes[0], HEADLINE):
        for objective, curve in results["curves"].items():
            c = curve[metric]
            ax.plot(c["steps"], c["mean"], marker="o", markersize=3, label=objective)
            ax.fill_between(
                c["steps"],
                [m - s for m, s in zip(c["mean"], c["std"])],
                [m + s for m, s in zip(c["mean"], c["std"])],
                alpha=0.2,
            )
        ax.set_title(metric, fontsize=8)
        ax.set_xlabel("LoRA step")
    axes[0][0].set_ylabel("validation, percent")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"Validation curves ({results['setup']['seeds']} seeds, mean +- std)", fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def chart(results: dict, path: Path) -> None:
    """Grouped bars: the headline metrics per objective, with the std over seeds as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = results["metrics"]
    objectives = list(table)
    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / len(objectives)
    for i, objective in enumerate(objectives):
        means = [table[objective][m]["mean"] for m in HEADLINE]
        stds = [table[objective][m]["std"] for m in HEADLINE]
        ax.bar([x + i * width for x in range(len(HEADLINE))], means, width, yerr=stds, capsize=3, label=objective)
    ax.set_xticks(
        [x + width * (len(objectives) - 1) / 2 for x in range(len(HEADLINE))],
        [m.replace("/", "\n") for m in HEADLINE],
        fontsize=8,
    )
    ax.set_ylabel("percent")
    ax.set_title(f"World ablation ({results['setup']['seeds']} seeds, mean +- std)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
