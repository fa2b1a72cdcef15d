"""CV-Bench scored both ways: lmms-eval's plain accuracy over all items, and the CV-Bench paper's

    ½ · ((acc_ADE20K + acc_COCO) / 2 + acc_Omni3D)

(Cambrian-1, arXiv 2406.16860; the formula of the CV-Bench dataset card, "Accuracy", and of
lmms-eval 0.7.3's unused ``tasks/cv_bench/utils.py:cv_bench_default_aggregate_results``). The two
differ because the sources have different sizes. Prompt, parsing and per-item records are lmms-eval's own.
"""

from __future__ import annotations

import math

from lmms_eval.tasks.cv_bench.utils import (  # noqa: F401  (cv_bench_doc_*: referenced from the YAMLs)
    cv_bench_aggregate_results,
    cv_bench_default_aggregate_results,
    cv_bench_doc_to_text,
    cv_bench_doc_to_visual,
    cv_bench_process_results,
)

SOURCES = ("ADE20K", "COCO", "Omni3D")


def cv_bench_both_process_results(doc: dict, result: list[str]) -> dict:
    """lmms-eval's per-item record (answer, parsed letter, ``source``), once for each metric."""
    record = cv_bench_process_results(doc, result)["cv_bench_acc"]
    return {"lmms_eval_accuracy": record, "paper_score": record}


def cv_bench_lmms_eval_accuracy(results: list[dict]) -> float:
    return cv_bench_aggregate_results(results)


def cv_bench_paper_score(results: list[dict]) -> float:
    """The paper's score; NaN when a source has no item (the formula is undefined there)."""
    if not {r["source"] for r in results} >= set(SOURCES):
        return math.nan
    return cv_bench_default_aggregate_results(results)
