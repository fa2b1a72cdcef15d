"""The end-of-pipeline summary: loss curves of every training stage, the tower and MLLM
comparisons, and where each artefact is. Reads only what the stages wrote."""

from __future__ import annotations

import json
import os
from pathlib import Path


def plot_loss(stage_dir: Path) -> Path | None:
    """``stage_dir/loss.png`` from its metrics.jsonl (None when the stage logged nothing)."""
    metrics = stage_dir / "metrics.jsonl"
    if not metrics.is_file():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = {}
    for line in metrics.read_text().splitlines():  # a resumed run logs some steps twice: keep the last
        record = json.loads(line)
        points[record["step"]] = record["loss"]
    steps = sorted(points)
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(steps, [points[s] for s in steps], marker="." if len(steps) < 50 else None)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title(f"{stage_dir.parent.name}/{stage_dir.name}")
    fig.tight_layout()
    out = stage_dir / "loss.png"
    tmp = stage_dir / "loss.tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, out)
    return out


def summarize(runs: dict[str, Path], tower_eval: Path, mllm_eval: Path) -> str:
    """Markdown: tower table, MLLM table, loss curves and artefacts of the given training runs."""
    lines = ["# dcr-mllm pipeline summary", ""]
    lines += ["## Towers (MMVP-VLM, probes; %)", ""] + _tower_table(tower_eval) + [""]
    report = mllm_eval / "report" / "report.md"
    lines += ["## LLaVA on the lmms-eval suite", "", report.read_text().strip() if report.is_file() else "(not run)", ""]
    lines += ["## Training stages (loss curves)", ""]
    for name, run in runs.items():
        for stage_dir in sorted(p.parent for p in run.glob("*/train_state.json")):
            state = json.loads((stage_dir / "train_state.json").read_text())
            curve = plot_loss(stage_dir)
            lines.append(f"- {name}/{stage_dir.name}: {state['step']} steps, {curve}")
    lines += ["", "## Artefacts", ""]
    for name, run in runs.items():
        for artefact in ("tower", "model"):
            if (run / artefact).is_dir():
                lines.append(f"- {name} {artefact}: {run / artefact}")
    lines += [f"- tower reports: {tower_eval}", f"- MLLM reports: {mllm_eval / 'report'}"]
    return "\n".join(lines) + "\n"


def _tower_table(tower_eval: Path) -> list[str]:
    rows = [("MMVP-VLM average", "mmvp-vlm", "average"), ("zero-shot top-1", "classification", "zero_shot_top1"),
            ("linear-probe top-1", "classification", "linear_probe_top1"), ("fine-grained pairs average", "fine-grained", "average")]
    tables = {b: json.loads((tower_eval / b / "results.json").read_text()) for _, b, _ in rows if (tower_eval / b / "results.json").is_file()}
    if not tables:
        return ["(not run)"]
    towers = list(next(iter(tables.values())))
    lines = ["| metric | " + " | ".join(towers) + " |", "|---|" + "---:|" * len(towers)]
    for label, benchmark, metric in rows:
        if benchmark in tables:
            lines.append(f"| {label} | " + " | ".join(f"{tables[benchmark][t][metric]:.1f}" for t in towers) + " |")
    return lines
