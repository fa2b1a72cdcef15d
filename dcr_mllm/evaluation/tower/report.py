"""What a tower evaluation writes: JSON for machines, a Markdown table for people, a chart, the predictions.

``OUT/results.json`` maps each tower label to ``{metric: percent}``; ``OUT/details.json`` adds, per
metric, its 95 % Wilson interval over the items scored, the difference from the first tower with
McNemar's exact p on the same items (both where the benchmark reports each item right or wrong),
and the number the tower's authors report, with its source; ``OUT/predictions.csv`` has one row per
scored item with a ``tower`` column first; ``OUT/results.md`` is the same numbers as a table (a row
per metric, a column per tower); ``OUT/chart.png`` draws them as grouped bars with their intervals
and the reported numbers as marks. Each file is written under a temporary name and renamed,
``results.json`` last (an earlier one is removed first), so its presence means the report is
complete. ``write_comparison`` puts several reports of the same towers into one table and chart.
"""

from __future__ import annotations

import csv
import io
import json
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

from dcr_mllm.errors import DcrError
from dcr_mllm.evaluation.intervals import mcnemar_exact, wilson_interval
from dcr_mllm.io import write_atomic


@dataclass
class BenchmarkResult:
    """One tower's scores (percent, in display order) and its per-item predictions (dicts with equal keys)."""

    scores: dict[str, float]
    predictions: list[dict] = field(default_factory=list)
    #: per metric, whether each item scored was right, in one order for every tower (the interval's
    #: and the paired test's items); a metric without it is reported without either
    outcomes: dict[str, list[bool]] = field(default_factory=dict)
    #: per metric, the number the tower's authors report for it and where (``reported_scores``)
    reported: dict[str, tuple[float, str]] = field(default_factory=dict)


def details_of(results: dict[str, BenchmarkResult]) -> dict:
    """``{label: {metric: {"value", "ci", "n", "vs_first", "reported"}}}``: each score with its
    interval, its difference from the first tower (points, McNemar's p) and its reported number;
    None where it has none."""
    first = next(iter(results.values()))
    details = {}
    for index, (label, result) in enumerate(results.items()):
        rows = {}
        for metric, value in result.scores.items():
            items = result.outcomes.get(metric)
            ci = [100 * end for end in wilson_interval(sum(items), len(items))] if items else None
            theirs = first.outcomes.get(metric)
            vs_first = None
            if index and items and theirs and len(theirs) == len(items):
                ours_only = sum(a and not b for a, b in zip(items, theirs))
                first_only = sum(b and not a for a, b in zip(items, theirs))
                vs_first = {
                    "difference": 100 * (ours_only - first_only) / len(items),
                    "p": mcnemar_exact(ours_only, first_only),
                }
            reported = result.reported.get(metric)
            rows[metric] = {
                "value": value,
                "ci": ci,
                "n": len(items) if items else None,
                "vs_first": vs_first,
                "reported": {"value": reported[0], "source": reported[1]} if reported else None,
            }
        details[label] = rows
    return details


def write_report(
    out_dir: str | Path, title: str, results: dict[str, BenchmarkResult], note: str = ""
) -> dict[str, Path]:
    """Write the five files for ``{tower label: result}``; returns their paths by kind.

    Args:
        out_dir: the report directory (created if absent).
        title: heading of the table and the chart.
        results: each tower's result by label, in column order; all share one set of metrics.
        note: a line under the table's heading (data, towers); empty: none.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    details = details_of(results)
    write_atomic(out_dir / "predictions.csv", _predictions_csv(results).encode())
    return _write_tables(out_dir, title, details, note)


def write_comparison(out_dir: str | Path, reports: dict[str, Path], note: str = "") -> dict[str, Path]:
    """One table and one chart of several reports of the same towers (``{benchmark: report dir}``),
    each metric named ``benchmark/metric``; the reports stay where they are."""
    merged: dict[str, dict] = {}
    for benchmark, report in reports.items():
        details = json.loads((Path(report) / DETAILS).read_text(encoding="utf-8"))
        if merged and list(details) != list(merged):
            raise DcrError(f"{report} scored other towers ({', '.join(details)}) than {', '.join(merged)}")
        for label, rows in details.items():
            merged.setdefault(label, {}).update({f"{benchmark}/{metric}": row for metric, row in rows.items()})
    return _write_tables(Path(out_dir), "Tower comparison", merged, note)


DETAILS = "details.json"


def _write_tables(out_dir: Path, title: str, details: dict, note: str) -> dict[str, Path]:
    paths = {
        kind: out_dir / name for kind, name in (("md", "results.md"), ("png", "chart.png"), ("json", "results.json"))
    }
    paths["json"].unlink(missing_ok=True)  # an earlier report's, which the files below replace
    write_atomic(out_dir / DETAILS, (json.dumps(details, indent=1) + "\n").encode())
    write_atomic(paths["md"], _markdown_table(title, details, note).encode())
    write_atomic(paths["png"], _chart_png(title, details))
    scores = {label: {metric: row["value"] for metric, row in rows.items()} for label, rows in details.items()}
    write_atomic(paths["json"], (json.dumps(scores, indent=2) + "\n").encode())
    return {**paths, "details": out_dir / DETAILS}


def _cell(row: dict) -> str:
    text = f"{row['value']:.1f}"
    if row["ci"]:
        text += f" [{row['ci'][0]:.1f}, {row['ci'][1]:.1f}]"
    if row["vs_first"]:
        text += f", {row['vs_first']['difference']:+.1f} (p {row['vs_first']['p']:.2f})"
    if row["reported"]:
        text += f"; reported {row['reported']['value']:.1f}"
    return text


def _markdown_table(title: str, details: dict, note: str = "") -> str:
    labels = list(details)
    metrics = list(details[labels[0]])
    lines = [f"# {title}", ""]
    if note:
        lines += [note, ""]
    lines += ["| metric (%) | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
    for metric in metrics:
        lines.append(f"| {metric} | " + " | ".join(_cell(details[label][metric]) for label in labels) + " |")
    rows = [row for label in labels for row in details[label].values()]
    legend = []
    if any(row["ci"] for row in rows):
        legend.append("[low, high]: the 95 % Wilson interval over the items scored")
    if any(row["vs_first"] for row in rows):
        legend.append(f"+x (p): the difference from {labels[0]} in points, McNemar's exact p on the same items")
    if legend:
        lines += ["", "; ".join(legend) + "."]
    sources = sorted(
        {(label, r["reported"]["source"]) for label in labels for r in details[label].values() if r["reported"]}
    )
    if sources:
        lines += ["", "Reported: the number the tower's authors report, not measured here:"]
        lines += [f"- {label}: {source}" for label, source in sources]
    return "\n".join(lines) + "\n"


def _predictions_csv(results: dict[str, BenchmarkResult]) -> str:
    rows = [{"tower": label, **row} for label, result in results.items() for row in result.predictions]
    text = io.StringIO()
    if rows:
        writer = csv.DictWriter(text, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return text.getvalue()


def _chart_png(title: str, details: dict) -> bytes:
    """Grouped bars: a group per metric, a bar per tower, its interval as an error bar and the
    reported number as a black mark."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(details)
    metrics = list(details[labels[0]])
    width = 0.8 / len(labels)
    many = len(metrics) > 12  # a comparison of several benchmarks: narrower groups, names written upwards
    per_metric = (0.25 if many else 0.6) + (0.12 if many else 0.2) * len(labels)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.0 + len(metrics) * per_metric), 6.4 if many else 4.8))
    for i, label in enumerate(labels):
        positions = [m + (i - (len(labels) - 1) / 2) * width for m in range(len(metrics))]
        rows = [details[label][metric] for metric in metrics]
        values = [row["value"] for row in rows]
        errors = [
            [row["value"] - row["ci"][0] if row["ci"] else 0 for row in rows],
            [row["ci"][1] - row["value"] if row["ci"] else 0 for row in rows],
        ]
        ax.bar(positions, values, width, label=label, yerr=errors, capsize=2, error_kw={"linewidth": 0.8})
        marks = [(x, row["reported"]["value"]) for x, row in zip(positions, rows) if row["reported"]]
        if marks:
            ax.scatter(*zip(*marks), marker="_", s=200, color="black", zorder=3)
    if many:
        ax.set_xticks(range(len(metrics)), metrics, fontsize=7, rotation=90)
    else:
        ax.set_xticks(
            range(len(metrics)), [textwrap.fill(metric, 14, break_long_words=False) for metric in metrics], fontsize=8
        )
    ax.set_ylim(0, 100)
    ax.set_ylabel("% (bars: measured, 95 % interval; black marks: reported)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=120)
    plt.close(fig)
    return png.getvalue()
