"""The perception suite: CV-Bench scored both ways, and a group of the pinned lmms-eval's own tasks (the offline
stand-ins run through the real lmms-eval in test_lmms_eval_run.py)."""

import math
import re
from pathlib import Path

import pytest

from dcr_mllm.evaluation.mllm.cv_bench_task import cv_bench_lmms_eval_accuracy, cv_bench_paper_score

REPO = Path(__file__).resolve().parents[3]
LMMS_TASKS = Path(__import__("lmms_eval").__file__).parent / "tasks"


def test_paper_score_weighs_sources_not_items():
    """4 ADE20K items all right, 1 COCO wrong, 1 Omni3D right: accuracy 5/6, paper ½·((1+0)/2+1) = 0.75."""
    records = [{"source": "ADE20K", "is_correct": True}] * 4 + [
        {"source": "COCO", "is_correct": False},
        {"source": "Omni3D", "is_correct": True},
    ]
    assert cv_bench_lmms_eval_accuracy(records) == pytest.approx(5 / 6)
    assert cv_bench_paper_score(records) == pytest.approx(0.75)
    assert math.isnan(cv_bench_paper_score(records[:4]))


def test_perception_group_names_tasks_of_the_pinned_lmms_eval():
    import yaml

    group = yaml.safe_load((REPO / "dcr_mllm/tasks/dcr_suite_perception.yaml").read_text())
    files = [f for f in LMMS_TASKS.rglob("*") if f.name.endswith(("yaml", "_yaml")) and f.is_file()]
    known = {m.group(2) for f in files for m in re.finditer(r"^(task|group):\s*\"?([\w-]+)", f.read_text(), re.M)}
    ours = {p.stem for p in (REPO / "dcr_mllm/tasks").glob("*.yaml")}
    assert set(group["task"]) <= known | ours
    assert {"vlmsareblind", "blink_counting", "blink_spatial_relation", "countbenchqa", "mmstar"} <= set(group["task"])
