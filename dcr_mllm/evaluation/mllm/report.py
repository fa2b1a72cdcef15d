"""Compare lmms-eval runs: several ``*_results.json`` files -> one table (Markdown + JSON) and a chart.

Each run is labelled ``NAME=FILE`` or, by default, by the model it scored (the ``pretrained``
and ``vision_tower`` model arguments). Metrics are ``task/metric`` pairs; a metric a run lacks
is shown as "-".
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from dcr_mllm.errors import DcrError
from dcr_mllm.io import atomic_path, write_atomic
from dcr_mllm.strict import read_json


def _label(result: dict, path: Path) -> str:
    config = result.get("config") if isinstance(result.get("config"), dict) else {}
    args = dict(part.split("=", 1) for part in str(config.get("model_args", "")).split(",") if "=" in part)
    name = Path(args.get("pretrained", result.get("model_name", path.stem))).name
    return f"{name} + {Path(args['vision_tower']).name}" if args.get("vision_tower") else name


def _read_results(path: Path) -> dict:
    """A results file's JSON, checked to hold a ``results`` table of per-task tables."""
    data = read_json(path)
    results = data.get("results") if isinstance(data, dict) else None
    if not isinstance(results, dict) or not all(isinstance(values, dict) for values in results.values()):
        raise DcrError(
            f"{path} is not an lmms-eval results file (no 'results' table of tasks); pass the *_results.json lmms-eval wrote"
        )
    return data


def read_run(path: str | Path) -> dict[str, float]:
    """{'task/metric': value} of one lmms-eval results file (stderr entries and groups left out)."""
    path = _results_file(Path(path))
    results = _read_results(path)["results"]
    metrics = {}
    for task, values in results.items():
        for key, value in values.items():
            metric, _, _ = key.partition(",")
            if (
                isinstance(value, (int, float))
                and not metric.endswith(("_stderr", "_stderr_clt", "_stderr_clustered"))
                and "stderr" not in metric
            ):
                metrics[f"{task}/{metric}"] = float(value)
    return metrics


def compare_runs(runs: list[str], output: str | Path, note: str = "") -> dict[str, dict[str, float]]:
    """Write ``report.json``, ``report.md`` and ``report.png`` to ``output``; returns the table.

    Args:
        runs: lmms-eval result files or output directories, each ``NAME=PATH`` or ``PATH`` (labelled by its model).
        output: the report directory.
        note: a line above the Markdown table (where the data came from); empty: none.
    """
    table: dict[str, dict[str, float]] = {}
    for run in runs:
        name, sep, file = run.partition("=")
        path = Path(file if sep else run)
        if not sep:
            name = _label(_read_results(_results_file(path)), path)
        if name in table:
            name = f"{name} ({path})"
        table[name] = read_run(path)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    metrics = sorted({m for values in table.values() for m in values})
    write_atomic(output / "report.json", json.dumps(table, indent=2))
    write_atomic(output / "report.md", (f"{note}\n\n" if note else "") + markdown_table(table, metrics))
    chart(table, metrics, output / "report.png")
    return table


def _results_file(path: Path) -> Path:
    """The file itself, or the newest results file of an lmms-eval --output_path directory."""
    if path.is_dir():
        files = sorted(path.rglob("*_results.json"), key=lambda p: p.stat().st_mtime)
        if not files:
            raise DcrError(f"{path} holds no lmms-eval *_results.json file")
        return files[-1]
    if not path.is_file():
        raise DcrError(f"{path} does not exist; pass lmms-eval result files or their output directories")
    return path


def markdown_table(table: dict[str, dict[str, float]], metrics: list[str]) -> str:
    runs = list(table)
    lines = ["| metric | " + " | ".join(runs) + " |", "|---|" + "---:|" * len(runs)]
    for metric in metrics:
        cells = [f"{table[run][metric]:.4f}" if metric in table[run] else "-" for run in runs]
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def chart(table: dict[str, dict[str, float]], metrics: list[str], path: Path) -> None:
    """Grouped horizontal bars: one group per metric, one bar per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = list(table)
    height = 0.8 / max(1, len(runs))
    fig, ax = plt.subplots(figsize=(8, 0.5 + 0.35 * len(metrics) * max(1, len(runs)) / 1.5))
    for i, run in enumerate(runs):
        values = [table[run].get(metric, math.nan) for metric in metrics]
        ax.barh([m + i * height for m in range(len(metrics))], values, height=height, label=run)
    ax.set_yticks([m + 0.4 - height / 2 for m in range(len(metrics))], metrics, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("score")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
