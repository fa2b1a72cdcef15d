"""The lmms-eval tasks ship inside the wheel and work from an installed copy, not only from the clone."""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from dcr_mllm.evaluation.mllm.eval_data import synthetic_mmvp, synthetic_pope, task_dir

REPO = Path(__file__).resolve().parents[3]
TASK_FILES = {
    "dcr_suite.yaml",
    "dcr_suite_local.yaml",
    "mmvp_local.yaml",
    "pope_local_adv.yaml",
    "pope_local_pop.yaml",
    "pope_local_random.yaml",
    "world_local.yaml",
    "world_local_open.yaml",
    "_pope_local_template_yaml",
    "_world_local_template_yaml",
    "utils.py",
}


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The wheel built offline from a copy of the sources (setuptools' own backend), unpacked as pip installs it."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    src.mkdir()
    shutil.copy(REPO / "pyproject.toml", src)
    shutil.copy(REPO / "README.md", src)
    shutil.copytree(REPO / "dcr_mllm", src / "dcr_mllm", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [sys.executable, "-c", f"from setuptools import build_meta; build_meta.build_wheel({str(root / 'dist')!r})"],
        cwd=src,
        check=True,
        capture_output=True,
    )
    (wheel,) = (root / "dist").glob("dcr_mllm-*.whl")
    site = root / "site"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        archive.extractall(site)
    return names, site


def test_the_wheel_holds_the_task_folder_and_configs(installed):
    names, _ = installed
    assert {f"dcr_mllm/tasks/{name}" for name in TASK_FILES} <= names
    assert {
        f"dcr_mllm/configs/{stage}_{preset}.yaml" for stage in ("enhance", "llava") for preset in ("tiny", "world")
    } <= names
    shipped = json.loads(
        (REPO / "dcr_mllm" / "world" / "weights" / "manifest.json").read_text()
    )  # the world's trained base models
    assert {
        f"dcr_mllm/world/weights/{name}/{f}" for name, entry in shipped["models"].items() for f in entry["files"]
    } <= names
    assert "dcr_mllm/world/weights/manifest.json" in names


def test_task_dir_is_the_installed_folder_and_the_clone_links_it(installed):
    _, site = installed
    env = {**os.environ, "PYTHONPATH": str(site)}
    printed = subprocess.run(
        [sys.executable, "-m", "dcr_mllm.cli", "eval-task-dir"],
        cwd="/",
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(printed) == site / "dcr_mllm" / "tasks"
    assert {p.name for p in Path(printed).iterdir()} >= TASK_FILES
    assert (REPO / "eval_tasks").resolve() == task_dir(), "eval_tasks/ is the package's task folder"


@pytest.mark.slow
def test_lmms_eval_builds_the_local_tasks_from_the_installed_copy(installed, tmp_path):
    """lmms-eval's TaskManager, given the printed folder, loads every local task: YAMLs, the utils.py
    functions they name and the parquet data (what `lmms-eval eval` does before it runs a model)."""
    _, site = installed
    synthetic_mmvp(tmp_path, num_pairs=2)
    synthetic_pope(tmp_path, questions_per_split=4)
    env = {
        **os.environ,
        "PYTHONPATH": str(site),
        "DCR_EVAL_DATA": str(tmp_path),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_DATASETS_CACHE": str(tmp_path / "cache"),
    }
    script = (
        "from lmms_eval.tasks import TaskManager, get_task_dict\n"
        "from dcr_mllm.evaluation.mllm.eval_data import task_dir\n"
        "import dcr_mllm\n"
        "tasks = get_task_dict(['dcr_suite_local'], TaskManager('ERROR', include_path=str(task_dir())))\n"
        "flat = {t.config.task: t for group in tasks.values() for t in group.values()}\n"
        "print(dcr_mllm.__file__)\n"
        "for name in sorted(flat): print(name, len(flat[name].test_docs()), flat[name].config.metric_list[-1]['metric'])\n"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd="/", env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert lines[0] == str(site / "dcr_mllm" / "__init__.py")
    assert lines[1:] == [
        "mmvp_local 4 mmvp_pair_accuracy",
        "pope_local_adv 4 pope_pred_yes_ratio",
        "pope_local_pop 4 pope_pred_yes_ratio",
        "pope_local_random 4 pope_pred_yes_ratio",
    ]
