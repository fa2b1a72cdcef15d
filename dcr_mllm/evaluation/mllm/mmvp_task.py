"""The lmms-eval MMVP task's hooks (``mmvp_local``): the question with lettered options, the
answer as a letter, MMVP's metrics (accuracy; pair accuracy, both questions of a pair right)."""

from __future__ import annotations

from dcr_mllm.evaluation.mllm.task_common import doc_image, option_letter, parse_options, share_correct

mmvp_doc_to_visual = doc_image
mmvp_accuracy = share_correct


def mmvp_doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    kwargs = lmms_eval_specific_kwargs or {}
    options = "\n".join(f"{chr(65 + i)}. {option}" for i, option in enumerate(parse_options(doc["Options"])))
    return f"{kwargs.get('pre_prompt', '')}{doc['Question']}\n{options}{kwargs.get('post_prompt', '')}"


def mmvp_target(doc: dict) -> str:
    return doc["Correct Answer"].strip().strip("()").upper()


def mmvp_process_results(doc: dict, results: list[str]) -> dict:
    pred = option_letter(results[0], parse_options(doc["Options"]))
    result = {
        "index": int(doc["Index"]),
        "pair": (int(doc["Index"]) - 1) // 2,
        "pred": pred,
        "correct": pred == mmvp_target(doc),
    }
    return {"mmvp_accuracy": result, "mmvp_pair_accuracy": result}


def mmvp_pair_accuracy(results: list[dict]) -> float:
    """A pair (indices 2k+1, 2k+2) counts only when both of its questions are right."""
    pairs: dict[int, list[bool]] = {}
    for r in results:
        pairs.setdefault(r["pair"], []).append(r["correct"])
    complete = [all(v) for v in pairs.values() if len(v) == 2]
    return sum(complete) / len(complete) if complete else 0.0
