"""What a tower evaluation writes: JSON for machines, a Markdown table for people, a chart, the predictions.

``OUT/results.json`` maps each tower label to ``{metric: percent}``; ``OUT/predictions.csv`` has
one row per scored item with a ``tower`` column first; ``OUT/results.md`` is the same numbers as a
table (a row per metric, a column per tower); ``OUT/chart.png`` draws them as grouped bars. Each
file is written under a temporary name and renamed, ``results.json`` last (an earlier one is
removed first), so its presence means the report is complete.
"""

from __future__ import annotations

import csv
import io
import json
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

from dcr_mllm.io import write_atomic


@dataclass
class BenchmarkResult:
    """One tower's scores (percent, in display order) and its per-item predictions (dicts with equal keys)."""

    scores: dict[str, float]
    predictions: list[dict] = field(default_factory=list)


def write_report(
    out_dir: str | Path, title: str, results: dict[str, BenchmarkResult], note: str = ""
) -> dict[str, Path]:
    """Write the four files for ``{tower label: result}``; returns their paths by kind.

    Args:
        out_dir: the report directory (created if absent).
        title: heading of the table and the chart.
        results: each tower's result by label, in column order; all share one set of metrics.
        note: a line under the table's heading (data, towers); empty: none.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        kind: out_dir / name
        for kind, name in (
            ("csv", "predictions.csv"),
            ("md", "results.md"),
            ("png", "chart.png"),
            ("json", "results.json"),
        )
    }
    paths["json"].unlink(missing_ok=True)  # an earlier report's, which the files below replace
    write_atomic(paths["csv"], _predictions_csv(results).encode())
    write_atomic(paths["md"], _markdown_table(title, results, note).encode())
    write_atomic(paths["png"], _chart_png(title, results))
    scores = {label: result.scores for label, result in results.items()}
    write_atomic(paths["json"], (json.dumps(scores, indent=2) + "\n").encode())
    return paths


def _markdown_table(title: str, results: dict[str, BenchmarkResult], note: str = "") -> str:
    labels = list(results)
    metrics = list(next(iter(results.values())).scores)
    lines = [f"# {title}", ""]
    if note:
        lines += [note, ""]
    lines += ["| metric (%) | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
    for metric in metrics:
        lines.append(f"| {metric} | " + " | ".join(f"{results[label].scores[metric]:.1f}" for label in labels) + " |")
    return "\n".join(lines) + "\n"


def _predictions_csv(results: dict[str, BenchmarkResult]) -> str:
    rows = [{"tower": label, **row} for label, result in results.items() for row in result.predictions]
    text = io.StringIO()
    if rows:
        writer = csv.DictWriter(text, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return text.getvalue()


def _chart_png(title: str, results: dict[str, BenchmarkResult]) -> bytes:
    """Grouped bars: a group per metric, a bar per tower."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(results)
    metrics = list(next(iter(results.values())).scores)
    width = 0.8 / len(labels)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.0 + len(metrics) * (0.6 + 0.2 * len(labels))), 4.8))
    for i, label in enumerate(labels):
        positions = [m + (i - (len(labels) - 1) / 2) * width for m in range(len(metrics))]
        ax.bar(positions, [results[label].scores[metric] for metric in metrics], width, label=label)
    ax.set_xticks(
        range(len(metrics)), [textwrap.fill(metric, 14, break_long_words=False) for metric in metrics], fontsize=8
    )
    ax.set_ylim(0, 100)
    ax.set_ylabel("%")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=120)
    plt.close(fig)
    return png.getvalue()
