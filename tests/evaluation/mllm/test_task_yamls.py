"""The task YAMLs name the functions that exist: each metric's aggregation is the function of that
name, and each task's ``process_results`` returns exactly the metrics its YAML lists (read through
lmms-eval's own YAML loader, which resolves ``!function`` and ``include``)."""

import json

import pytest
from lmms_eval.utils import load_yaml_config

from dcr_mllm.evaluation.mllm.eval_data import task_dir
from dcr_mllm.evaluation.mllm.world_task import WORLD_METRICS, WORLD_OPEN_METRICS
from dcr_mllm.tasks import utils

DOCS = {  # one row of each task's data, enough for process_results
    "mmvp_local": {"Index": 1, "Options": "(a) red (b) blue", "Correct Answer": "(a)"},
    "pope_local_adv": {"answer": "yes"},
    "pope_local_pop": {"answer": "yes"},
    "pope_local_random": {"answer": "yes"},
    "world_local": {
        "question_id": "q",
        "attribute": "color",
        "kind": "choice",
        "answer": "A",
        "options": json.dumps(["red", "blue"]),
    },
    "world_local_open": {"question_id": "q", "attribute": "color", "kind": "open", "answer": "red"},
}


@pytest.mark.parametrize("task", sorted(DOCS))
def test_a_tasks_metrics_are_the_functions_it_names_and_what_its_results_hold(task):
    config = load_yaml_config(str(task_dir() / f"{task}.yaml"), mode="full")
    listed = [entry["metric"] for entry in config["metric_list"]]
    assert listed and all(entry["aggregation"] is getattr(utils, entry["metric"]) for entry in config["metric_list"])
    assert list(config["process_results"](DOCS[task], ["A"])) == listed


def test_the_world_yamls_list_every_world_metric():
    lists = {
        task: [e["metric"] for e in load_yaml_config(str(task_dir() / f"{task}.yaml"), mode="full")["metric_list"]]
        for task in ("world_local", "world_local_open")
    }
    assert lists == {"world_local": list(WORLD_METRICS), "world_local_open": list(WORLD_OPEN_METRICS)}
    with pytest.raises(AttributeError):
        utils.world_nothing_accuracy  # noqa: B018  (the module's lookup refuses unknown names)
