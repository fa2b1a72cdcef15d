"""The perception suite: CV-Bench scored both ways, and the offline stand-ins run through the real lmms-eval."""

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dcr_mllm.evaluation.cv_bench_task import cv_bench_lmms_eval_accuracy, cv_bench_paper_score
from dcr_mllm.evaluation.eval_data import prepare_eval_data
from dcr_mllm.llava.build import build_llava
from dcr_mllm.training.distributed import child_environment

REPO = Path(__file__).resolve().parents[2]
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


@pytest.fixture(scope="module")
def setup(tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("perception")
    torch.manual_seed(0)
    model, processor = build_llava(tiny["clip"], tiny["llama"])
    model.save_pretrained(root / "llava")
    processor.save_pretrained(root / "llava")
    prepare_eval_data(root / "data", synthetic={"cv_bench", "countbenchqa"})
    env = {
        **child_environment(),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "DCR_EVAL_DATA": str(root / "data"),
        "OMP_NUM_THREADS": "1",
    }
    return root, env


def lmms_eval(env, *args):
    result = subprocess.run(
        [sys.executable, "-m", "lmms_eval", *args], cwd="/", env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_task_list_shows_the_perception_suite(setup):
    _, env = setup
    listing = lmms_eval(env, "tasks", "list", "--include-path", str(REPO / "eval_tasks"))
    for name in (
        "dcr_suite_perception",
        "dcr_suite_perception_local",
        "cv_bench_both",
        "cv_bench_local",
        "countbenchqa_local",
    ):
        assert re.search(rf"^\s*{name}\s*$", listing, flags=re.M), f"{name} is not listed"


@pytest.mark.slow
def test_llava_hf_on_the_perception_stand_ins_reports_cv_bench_both_ways(setup):
    root, env = setup
    lmms_eval(
        env,
        "eval",
        "--model",
        "llava_hf",
        "--model_args",
        f"pretrained={root / 'llava'},device=cpu,device_map=cpu",
        "--tasks",
        "dcr_suite_perception_local",
        "--include_path",
        str(REPO / "eval_tasks"),
        "--batch_size",
        "1",
        "--gen_kwargs",
        "max_new_tokens=4",
        "--log_samples",
        "--output_path",
        str(root / "out"),
    )
    (file,) = list((root / "out").rglob("*_results.json"))
    results = json.loads(file.read_text())["results"]
    cv = results["cv_bench_local"]
    assert {"lmms_eval_accuracy,none", "paper_score,none"} <= set(cv) and "acc,none" in results["countbenchqa_local"]
    (samples,) = list((root / "out").rglob("*cv_bench_local*.jsonl"))
    records = [json.loads(line)["paper_score"] for line in samples.read_text().splitlines()]
    assert sorted({r["source"] for r in records}) == ["ADE20K", "COCO", "Omni3D"] and len(records) == 6
    assert cv["lmms_eval_accuracy,none"] == pytest.approx(cv_bench_lmms_eval_accuracy(records))
    assert cv["paper_score,none"] == pytest.approx(cv_bench_paper_score(records))
