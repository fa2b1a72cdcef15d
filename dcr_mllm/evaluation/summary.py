"""The end-of-pipeline summary: loss curves of every training stage, the tower and MLLM
comparisons, and where each artefact is. Reads only what the stages wrote."""

from __future__ import annotations

import json
from pathlib import Path

from dcr_mllm.errors import DcrError
from dcr_mllm.io import atomic_path
from dcr_mllm.weights import read_json, read_text


def loss_points(stage_dir: Path) -> dict[int, float] | None:
    """Step -> loss from ``stage_dir/metrics.jsonl`` (None when the stage logged nothing)."""
    metrics = stage_dir / "metrics.jsonl"
    if not metrics.is_file():
        return None
    points = {}
    for number, line in enumerate(read_text(metrics).splitlines(), start=1):  # a resumed run logs some steps twice: keep the last
        try:
            record = json.loads(line)
            points[int(record["step"])] = float(record["loss"])
        except (ValueError, TypeError, KeyError):
            raise DcrError(f"{metrics} line {number} is not a metrics record with step and loss; was the file edited or cut short?") from None
    return points


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
    ax.plot(steps, [points[s] for s in steps], marker="." if len(steps) < 50 else None)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title(f"{stage_dir.parent.name}/{stage_dir.name}")
    fig.tight_layout()
    out = stage_dir / "loss.png"
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return out


def summarize(runs: dict[str, Path], tower_eval: Path, mllm_eval: Path) -> str:
    """Markdown: tower table, MLLM table, loss curves and artefacts of the given training runs."""
    lines = ["# dcr-mllm pipeline summary", ""]
    lines += ["## Towers (MMVP-VLM, probes; %)", ""] + _tower_table(tower_eval) + [""]
    report = mllm_eval / "report" / "report.md"
    lines += ["## LLaVA on the lmms-eval suite", "", read_text(report).strip() if report.is_file() else "(not run)", ""]
    lines += ["## Training stages (loss curves)", ""]
    stages = []  # everything read and checked before the first curve is drawn
    for name, run in runs.items():
        for stage_dir in sorted(p.parent for p in run.glob("*/train_state.json")):
            state = read_json(stage_dir / "train_state.json")
            if not isinstance(state, dict) or not isinstance(state.get("step"), int):
                raise DcrError(f"{stage_dir / 'train_state.json'} has no step count; it was not written by a training stage")
            stages.append((name, stage_dir, state["step"], loss_points(stage_dir)))
    for name, stage_dir, step, points in stages:
        lines.append(f"- {name}/{stage_dir.name}: {step} steps, {plot_loss(stage_dir, points)}")
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
    tables = {b: read_json(tower_eval / b / "results.json") for _, b, _ in rows if (tower_eval / b / "results.json").is_file()}
    if not tables:
        return ["(not run)"]
    towers = list(next(iter(tables.values())))
    lines = ["| metric | " + " | ".join(towers) + " |", "|---|" + "---:|" * len(towers)]
    for label, benchmark, metric in rows:
        if benchmark in tables:
            try:
                lines.append(f"| {label} | " + " | ".join(f"{tables[benchmark][t][metric]:.1f}" for t in towers) + " |")
            except (KeyError, TypeError, ValueError):
                raise DcrError(f"{tower_eval / benchmark / 'results.json'} lacks {metric} for every tower; re-run dcr-mllm eval-tower") from None
    return lines
