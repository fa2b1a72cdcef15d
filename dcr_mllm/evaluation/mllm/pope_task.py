"""The lmms-eval POPE tasks' hooks (``pope_local_*``): yes/no answers, POPE's metrics (accuracy,
precision, recall, F1). POPE's yes-ratio (the share of "yes" *predictions*, as the POPE paper
defines it) is ``pope_pred_yes_ratio``: lmms-eval's ``pope_yes_ratio`` is another quantity (the share
of "yes" *ground truths*, lmms_eval/tasks/pope/utils.py:74-84), so the name is not reused."""

from __future__ import annotations

from dcr_mllm.evaluation.mllm.task_common import doc_image, yes_no

POPE_METRICS = ("pope_accuracy", "pope_precision", "pope_recall", "pope_f1_score", "pope_pred_yes_ratio")
pope_doc_to_visual = doc_image


def pope_doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    kwargs = lmms_eval_specific_kwargs or {}
    return f"{kwargs.get('pre_prompt', '')}{doc['question'].strip()}{kwargs.get('post_prompt', '')}"


def pope_process_results(doc: dict, results: list[str]) -> dict:
    result = {"prediction": yes_no(results[0]), "truth": doc["answer"].strip().lower()}
    return dict.fromkeys(POPE_METRICS, result)


def _counts(results: list[dict]) -> tuple[int, int, int, int]:
    tp = sum(r["prediction"] == "yes" and r["truth"] == "yes" for r in results)
    fp = sum(r["prediction"] == "yes" and r["truth"] == "no" for r in results)
    tn = sum(r["prediction"] == "no" and r["truth"] == "no" for r in results)
    fn = sum(r["prediction"] == "no" and r["truth"] == "yes" for r in results)
    return tp, fp, tn, fn


def pope_accuracy(results: list[dict]) -> float:
    return sum(r["prediction"] == r["truth"] for r in results) / len(results) if results else 0.0


def pope_precision(results: list[dict]) -> float:
    tp, fp, _, _ = _counts(results)
    return tp / (tp + fp) if tp + fp else 0.0


def pope_recall(results: list[dict]) -> float:
    tp, _, _, fn = _counts(results)
    return tp / (tp + fn) if tp + fn else 0.0


def pope_f1_score(results: list[dict]) -> float:
    precision, recall = pope_precision(results), pope_recall(results)
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def pope_pred_yes_ratio(results: list[dict]) -> float:
    """The share of "yes" predictions (POPE's yes-ratio): 0.5 on a balanced split is unbiased, so
    neither direction is better (``higher_is_better: null`` in the YAML)."""
    return sum(r["prediction"] == "yes" for r in results) / len(results) if results else 0.0
