"""The lmms-eval world tasks' result processing (``world_local``: every kind of question;
``world_local_open``: the open ones), used by the YAMLs in ``dcr_mllm/tasks/``. Each answer becomes
one record, ``{"question_id", "attribute", "kind", "correct"}``, that every metric of the task gets;
each aggregation keeps its part, and ``evaluation.analysis.significance`` reads the records back from the
logged samples for intervals and paired tests.
"""

from __future__ import annotations

import json
import re

from dcr_mllm.evaluation.mllm.task_common import doc_image, option_letter, share_correct, yes_no
from dcr_mllm.world.conversations import KINDS
from dcr_mllm.world.scenes import WORLD_VALUES

world_doc_to_visual = doc_image
world_accuracy = share_correct


def world_doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    return doc["question"]  # the instruction suffix is part of the question, as in training


def world_open_docs(dataset):
    """``world_local_open``'s questions: the open ones of the world set."""
    return dataset.filter(lambda doc: doc["kind"] == "open")


def _record(doc: dict, response: str) -> dict:
    """Open questions by the first word, yes/no ones by ``yes_no``, multiple choice by ``option_letter``."""
    if doc["kind"] == "open":
        words = re.findall(r"[a-z]+", response.lower())
        correct = bool(words) and words[0] == doc["answer"].lower()
    elif doc["kind"] == "yes_no":
        correct = yes_no(response) == doc["answer"].lower()
    else:
        correct = option_letter(response, json.loads(doc["options"])) == doc["answer"]
    return {"question_id": doc["question_id"], "attribute": doc["attribute"], "kind": doc["kind"], "correct": correct}


def world_process_results(doc: dict, results: list[str]) -> dict:
    return dict.fromkeys(WORLD_METRICS, _record(doc, results[0]))


def world_open_process_results(doc: dict, results: list[str]) -> dict:
    return dict.fromkeys(WORLD_OPEN_METRICS, _record(doc, results[0]))


def _world_accuracy_of(key: str, value: str):
    def aggregate(results: list[dict]) -> float:
        return world_accuracy([r for r in results if r[key] == value])

    aggregate.__name__ = f"world_{value}_accuracy"
    return aggregate


#: ``world_<attribute>_accuracy`` for each attribute and ``world_<kind>_accuracy`` for each kind of
#: question (the YAMLs list them); ``WORLD_METRICS`` adds the overall ``world_accuracy``, and
#: ``WORLD_OPEN_METRICS`` are those of ``world_local_open`` (no yes/no or choice questions to score)
WORLD_PART_ACCURACY = {f"world_{a}_accuracy": _world_accuracy_of("attribute", a) for a in WORLD_VALUES} | {
    f"world_{k}_accuracy": _world_accuracy_of("kind", k) for k in KINDS
}
WORLD_METRICS = ("world_accuracy", *WORLD_PART_ACCURACY)
WORLD_OPEN_METRICS = tuple(m for m in WORLD_METRICS if m not in ("world_yes_no_accuracy", "world_choice_accuracy"))
#: the world tasks: every kind of question, and the open ones
WORLD_TASKS = ("world_local", "world_local_open")
