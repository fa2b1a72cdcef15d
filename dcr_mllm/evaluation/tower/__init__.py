"""Measure a tower: MMVP-VLM, classification probes (D-Ability), fine-grained pairs (P-Ability),
clip_benchmark's zero-shot sets.

``evaluate_towers`` scores several towers on one benchmark and writes ``results.json``,
``details.json`` (intervals, paired differences, reported numbers), ``predictions.csv``,
``results.md`` and ``chart.png``; ``evaluate_benchmarks`` does so for several benchmarks and puts
them in one table and chart; the ``evaluate_*`` functions score one
loaded tower; ``synthetic`` writes stand-in datasets in the same layouts as the real ones.
"""

from dcr_mllm.evaluation.tower.mmvp_vlm import CATEGORIES, evaluate_mmvp_vlm, ground_truth, read_benchmark
from dcr_mllm.evaluation.tower.probes import (
    ClassificationData,
    evaluate_classification,
    evaluate_fine_grained,
    fit_linear_probe,
)
from dcr_mllm.evaluation.tower.report import BenchmarkResult, write_report
from dcr_mllm.evaluation.tower.run import BENCHMARKS, evaluate_benchmarks, evaluate_towers, parse_tower_args
from dcr_mllm.evaluation.tower.synthetic import (
    CATEGORY_ATTRIBUTES,
    fine_grained_pairs,
    write_classification_folder,
    write_mmvp_vlm,
)

__all__ = [
    "BENCHMARKS",
    "CATEGORIES",
    "CATEGORY_ATTRIBUTES",
    "BenchmarkResult",
    "ClassificationData",
    "evaluate_benchmarks",
    "evaluate_classification",
    "evaluate_fine_grained",
    "evaluate_mmvp_vlm",
    "evaluate_towers",
    "fine_grained_pairs",
    "fit_linear_probe",
    "ground_truth",
    "parse_tower_args",
    "read_benchmark",
    "write_classification_folder",
    "write_mmvp_vlm",
    "write_report",
]
