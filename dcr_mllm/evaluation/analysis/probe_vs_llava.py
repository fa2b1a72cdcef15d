"""The tower's probe beside its LLaVA, per attribute, and the learning targets each LLaVA meets or
misses: the part of the pipeline summary (``summary``) that asks whether what the tower holds
reaches its LLaVA. Apart from ``summary`` so that each module stays within the line budget."""

from __future__ import annotations

from pathlib import Path

from dcr_mllm.io import atomic_path
from dcr_mllm.strict import read_json


def probe_vs_llava(
    tower_results: Path, significance_file: Path
) -> dict[str, dict[str, tuple[float, float, float, float]]]:
    """``{name: {attribute: (feature-layer probe %, LLaVA open-question accuracy %, its interval)}}``
    for every name scored both as a tower (``eval-tower --benchmark world``) and as a LLaVA
    (``world_local``); {} when none is. Open questions ask for the value, as the probe reads it."""
    from dcr_mllm.world.scenes import WORLD_VALUES

    if not tower_results.is_file() or not significance_file.is_file():
        return {}
    towers, llavas = read_json(tower_results), read_json(significance_file).get("accuracy", {})
    out = {}
    for name in towers:
        probe, llava = towers.get(name), llavas.get(name)
        if isinstance(probe, dict) and isinstance(llava, dict):
            out[name] = {
                a: (
                    probe[f"probe_layer/{a}"],
                    llava[f"{a}/open"]["accuracy"],
                    llava[f"{a}/open"]["low"],
                    llava[f"{a}/open"]["high"],
                )
                for a in WORLD_VALUES
                if f"probe_layer/{a}" in probe and f"{a}/open" in llava
            }
    return {name: rows for name, rows in out.items() if rows}


#: what a world LLaVA must reach to count as having learnt its questions: yes/no and choice this many
#: points above chance (50), and each attribute's open questions within OPEN_WITHIN points of the
#: tower's feature-layer probe wherever that probe reads more than PROBE_FLOOR percent
ABOVE_CHANCE, OPEN_WITHIN, PROBE_FLOOR = 20.0, 10.0, 80.0


def learning_targets(pairs: dict[str, dict[str, tuple[float, float, float, float]]], accuracy: dict) -> list[str]:
    """Markdown: each learning target and, per LLaVA, its accuracy and whether it is met."""
    names = list(pairs)
    scored = [kind for kind in ("yes_no", "choice") if any(kind in accuracy[n] for n in names)]
    rows = [
        (
            f"{kind.replace('_', '/')} ≥ {50 + ABOVE_CHANCE:.0f}",
            {n: (accuracy[n][kind]["accuracy"], 50 + ABOVE_CHANCE) for n in names if kind in accuracy[n]},
        )
        for kind in scored
    ]
    attributes = [a for a in pairs[names[0]] if all(a in pairs[n] for n in names)]
    for attribute in attributes:
        goals = {
            n: (pairs[n][attribute][1], pairs[n][attribute][0] - OPEN_WITHIN)
            for n in names
            if pairs[n][attribute][0] > PROBE_FLOOR
        }
        if goals:
            rows.append((f"{attribute} / open ≥ its probe − {OPEN_WITHIN:.0f}", goals))
    lines = [
        "## Has each LLaVA learnt its questions? (targets)",
        "",
        f"Yes/no and choice at least {ABOVE_CHANCE:.0f} points above chance; each attribute's open questions within "
        f"{OPEN_WITHIN:.0f} points of the tower's feature-layer probe, wherever that probe reads more than {PROBE_FLOOR:.0f} %.",
        "",
        "| target | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for label, goals in rows:
        cells = [
            f"{goals[n][0]:.1f} ({'met' if goals[n][0] >= goals[n][1] else f'not met: {goals[n][1]:.1f} needed'})"
            if n in goals
            else "-"
            for n in names
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if len(scored) < 2:
        lines += [
            "",
            "Yes/no and multiple-choice questions were not scored in this run (`world_local_open`: the default schedule "
            "trains and scores the open questions; `run_all.sh --full` trains on every kind and scores it, `world_local`).",
        ]
    return lines


def probe_vs_llava_table(pairs: dict[str, dict[str, tuple[float, float, float, float]]]) -> list[str]:
    names = list(pairs)
    lines = [
        "| attribute | "
        + " | ".join(f"probe: {n}" for n in names)
        + " | "
        + " | ".join(f"LLaVA: {n}" for n in names)
        + " |",
        "|---|" + "---:|" * (2 * len(names)),
    ]
    for attribute in pairs[names[0]]:
        cells = [f"{pairs[n][attribute][0]:.1f}" if attribute in pairs[n] else "-" for n in names]
        cells += [
            f"{pairs[n][attribute][1]:.1f} [{pairs[n][attribute][2]:.1f}, {pairs[n][attribute][3]:.1f}]"
            if attribute in pairs[n]
            else "-"
            for n in names
        ]
        lines.append(f"| {attribute} | " + " | ".join(cells) + " |")
    return lines


def plot_probe_vs_llava(pairs: dict[str, dict[str, tuple[float, float, float, float]]], path: Path) -> Path:
    """Per attribute, a hatched bar (probe) and a solid bar with its 95 % interval (LLaVA) for each name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(pairs)
    attributes = list(pairs[names[0]])
    width = 0.8 / (2 * len(names))
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(attributes), 3.6))
    for i, name in enumerate(names):
        for j, (label, hatch) in enumerate((("probe", "//"), ("LLaVA", None))):
            offset = (2 * i + j) * width
            rows = [pairs[name].get(a, (float("nan"),) * 4) for a in attributes]
            values = [r[j] for r in rows]
            errors = None if hatch else [[r[1] - r[2] for r in rows], [r[3] - r[1] for r in rows]]
            ax.bar(
                [x + offset for x in range(len(attributes))],
                values,
                width,
                hatch=hatch,
                color=f"C{i}",
                alpha=0.45 if hatch else 0.9,
                label=f"{name}: {label}",
                yerr=errors,
                capsize=2,
            )
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(attributes))], attributes, fontsize=8)
    ax.set_ylabel("percent")
    ax.set_ylim(0, 100)
    ax.set_title("Feature-layer probe vs LLaVA open-question accuracy (95 % interval), per attribute", fontsize=9)
    ax.legend(fontsize=7, ncol=2 * len(names), loc="upper center", bbox_to_anchor=(0.5, -0.1))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path
