"""The real lmms-eval command line on a tiny llava-hf model with the project's tasks, offline."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dcr_mllm.evaluation.mllm.cv_bench_task import cv_bench_lmms_eval_accuracy, cv_bench_paper_score
from dcr_mllm.evaluation.mllm.eval_data import prepare_eval_data, synthetic_mmvp, synthetic_pope
from dcr_mllm.evaluation.mllm.pope_task import POPE_METRICS
from dcr_mllm.evaluation.mllm.world_task import WORLD_METRICS, WORLD_OPEN_METRICS
from dcr_mllm.llava.build import build_llava
from dcr_mllm.training.distributed import child_environment

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def setup(tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("lmms")
    torch.manual_seed(0)
    model, processor = build_llava(tiny["clip"], tiny["llama"])
    model.save_pretrained(root / "llava")
    processor.save_pretrained(root / "llava")
    synthetic_mmvp(root / "data", num_pairs=2)
    synthetic_pope(root / "data", questions_per_split=4)
    prepare_eval_data(root / "data", world=2, synthetic={"cv_bench", "countbenchqa"})
    # not the launcher variables an in-process training test of this session set (its port is held here)
    env = {
        **child_environment(),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "DCR_EVAL_DATA": str(root / "data"),
        "OMP_NUM_THREADS": "1",
    }
    return root, env


def lmms_eval(env, *args, check=True):
    result = subprocess.run(
        [sys.executable, "-m", "lmms_eval", *args], cwd="/", env=env, capture_output=True, text=True, timeout=600
    )
    if check and result.returncode != 0:
        raise AssertionError(result.stdout[-3000:] + result.stderr[-3000:])
    return result


def results_of(out: Path, part: str = "results") -> dict:
    (file,) = list(out.rglob("*_results.json"))
    return json.loads(file.read_text())[part]


@pytest.mark.slow
def test_llava_hf_on_the_local_tasks_reports_every_metric(setup):
    root, env = setup
    # through the clone's eval_tasks, a link to the package's task folder, which lmms-eval follows
    lmms_eval(
        env,
        "eval",
        "--model",
        "llava_hf",
        "--model_args",
        f"pretrained={root / 'llava'},device=cpu,device_map=cpu",
        "--tasks",
        "dcr_suite_local,world_local",
        "--include_path",
        str(REPO / "eval_tasks"),
        "--batch_size",
        "1",
        "--output_path",
        str(root / "out"),
        "--log_samples",
    )
    results, higher_is_better = results_of(root / "out"), results_of(root / "out", "higher_is_better")
    assert {"mmvp_accuracy,none", "mmvp_pair_accuracy,none"} <= results["mmvp_local"].keys()
    for task in ("pope_local_adv", "pope_local_pop", "pope_local_random"):
        assert {f"{m},none" for m in POPE_METRICS} <= results[task].keys()
        assert all(0.0 <= results[task][f"{m},none"] <= 1.0 for m in POPE_METRICS)
        assert higher_is_better[task] == {
            "pope_accuracy": True,
            "pope_precision": True,
            "pope_recall": True,
            "pope_f1_score": True,
            "pope_pred_yes_ratio": None,
        }
    # the world: 2 images x 7 attributes x 3 kinds, so the overall accuracy is the mean of the attributes'
    world = results["world_local"]
    assert {f"{m},none" for m in WORLD_METRICS} <= world.keys() and len(WORLD_METRICS) == 1 + 7 + 3
    per_attribute = [world[f"{m},none"] for m in WORLD_METRICS[1:8]]
    assert all(abs(value * 6 - round(value * 6)) < 1e-9 for value in per_attribute)  # 6 questions per attribute
    assert world["world_accuracy,none"] == pytest.approx(sum(per_attribute) / 7)
    # every answer logged with its question id, so two models can be paired question by question
    from dcr_mllm.evaluation.analysis.significance import compare_world, world_samples

    samples = world_samples(root / "out")
    assert len(samples) == 2 * 7 * 3 and {s["kind"] for s in samples.values()} == {"open", "yes_no", "choice"}
    assert compare_world({"m": samples})["accuracy"]["m"]["all"]["accuracy"] == pytest.approx(
        100 * world["world_accuracy,none"]
    )


@pytest.mark.slow
def test_dcr_llava_swaps_the_tower_in_memory(setup, tiny, tmp_path):
    from transformers import CLIPVisionModel

    root, env = setup
    tower = tmp_path / "tower"
    enhanced = CLIPVisionModel.from_pretrained(tiny["clip"])
    with torch.no_grad():
        for param in enhanced.parameters():
            param.add_(0.01)  # a different tower of the same shape
    enhanced.save_pretrained(tower)
    (tower / "preprocessor_config.json").write_text((Path(tiny["clip"]) / "preprocessor_config.json").read_text())

    result = lmms_eval(
        env,
        "eval",
        "--model",
        "dcr_llava",
        "--model_args",
        f"pretrained={root / 'llava'},vision_tower={tower},device=cpu,device_map=cpu",
        "--tasks",
        "mmvp_local",
        "--include_path",
        str(REPO / "eval_tasks"),
        "--batch_size",
        "1",
        "--output_path",
        str(root / "swap"),
    )
    assert {"mmvp_accuracy,none", "mmvp_pair_accuracy,none"} <= results_of(root / "swap")["mmvp_local"].keys()
    logged = re.search(r"vision tower \S+ swapped in \(weights sha256 ([0-9a-f]{64})\)", result.stdout + result.stderr)
    assert logged, "dcr_llava must report the tower it loaded"

    from dcr_mllm.models.dcr_llava import DcrLlava

    plugin = DcrLlava(pretrained=str(root / "llava"), vision_tower=str(tower), device="cpu", device_map="cpu")
    assert plugin.vision_tower_sha256 == logged.group(1)
    loaded = plugin.model.model.vision_tower.state_dict()
    for key, value in enhanced.state_dict().items():
        assert torch.equal(loaded[key], value), f"{key} is not the swapped tower's"


def test_dcr_llava_refuses_a_tower_that_does_not_fit(setup, tiny, tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from dcr_mllm.errors import DcrError
    from dcr_mllm.models.dcr_llava import DcrLlava

    root, _ = setup
    wide = CLIPVisionModel(
        CLIPVisionConfig(
            hidden_size=48,
            intermediate_size=64,
            num_hidden_layers=3,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        )
    )
    wide.save_pretrained(tmp_path / "wide")
    with pytest.raises(DcrError, match="hidden size: checkpoint 32, tower 48"):
        DcrLlava(pretrained=str(root / "llava"), vision_tower=str(tmp_path / "wide"), device="cpu", device_map="cpu")


def test_task_list_shows_the_project_tasks(setup):
    """The documented way: --include_path "$(dcr-mllm eval-task-dir)" (LMMS_EVAL_PLUGINS cannot name
    tasks in lmms-eval 0.7.3: its TaskManager is built before it reads the variable)."""
    _, env = setup
    printed = subprocess.run(
        [sys.executable, "-m", "dcr_mllm.cli", "eval-task-dir"], env=env, capture_output=True, text=True, check=True
    )
    listing = lmms_eval(env, "tasks", "list", "--include-path", printed.stdout.strip()).stdout
    for name in (
        "dcr_suite",
        "dcr_suite_local",
        "mmvp_local",
        "pope_local_adv",
        "pope_local_pop",
        "pope_local_random",
        "world_local",
        "world_local_open",
    ):
        assert re.search(rf"^\s*{name}\s*$", listing, flags=re.M), f"{name} is not listed"


@pytest.mark.slow
def test_eval_mllm_scores_again_only_when_an_input_changed(setup, tmp_path, monkeypatch, capsys):
    """Stage 5's command: data for exactly the tasks asked for, results reused while the model, tasks
    and data are unchanged, scored again when the model changes; the task folder is the package's."""
    import shutil

    from dcr_mllm.cli import main
    from dcr_mllm.io import generated_from

    root, _env = setup
    data = tmp_path / "data"
    monkeypatch.setenv("DCR_EVAL_DATA", str(data))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    model = tmp_path / "llava"
    shutil.copytree(root / "llava", model)
    argv = ["eval-mllm", "--model", f"m={model}", "--tasks", "mmvp_local", "--output", str(tmp_path / "out")]
    assert main(argv) == 0
    assert generated_from(data / "mmvp")["generator"] == "synthetic-mmvp"
    assert (
        not (data / "pope").exists() and not (data / "world").exists()
    )  # the selector is exact: no POPE, no world questions
    first = next((tmp_path / "out" / "m").rglob("*_results.json"))
    assert "mmvp_local" in json.loads(first.read_text())["results"]
    report = (tmp_path / "out" / "report" / "report.md").read_text()
    assert report.startswith("data: synthetic stand-ins (mmvp: synthetic-mmvp)"), report
    capsys.readouterr()

    assert main(argv) == 0
    assert "m: up to date" in capsys.readouterr().out and first.is_file()

    (model / "generation_config.json").write_text(json.dumps({"max_new_tokens": 3}))  # the model changed
    assert main(argv) == 0
    assert "up to date" not in capsys.readouterr().out


@pytest.mark.slow
def test_eval_mllm_pairs_two_llavas_on_the_world_questions(setup, tmp_path, monkeypatch):
    """Two models scored side by side (one thread each on a CPU), every answer logged, and the
    world report: each accuracy with its interval, the pair's difference with McNemar's test."""
    from dcr_mllm.cli import main
    from dcr_mllm.evaluation.mllm import run as mllm_run

    root, _ = setup
    monkeypatch.setenv("DCR_EVAL_DATA", str(tmp_path / "data"))
    monkeypatch.setattr(mllm_run, "WORLD_TASK_IMAGES", 2)  # 14 open questions of 42, not 4200 of 12 600
    models = ["--model", f"a={root / 'llava'}", "--model", f"b={root / 'llava'}"]
    assert (
        main(["eval-mllm", *models, "--tasks", "world_local,world_local_open", "--output", str(tmp_path / "out")]) == 2
    )  # one world task
    assert not (tmp_path / "out").exists()
    # the default pipeline's task: the open questions only
    assert main(["eval-mllm", *models, "--tasks", "world_local_open", "--output", str(tmp_path / "out")]) == 0
    logs = [(tmp_path / "out" / "logs" / f"{name}.log").read_text() for name in "ab"]
    assert all("world_local_open" in log for log in logs)
    results = results_of(tmp_path / "out" / "a")["world_local_open"]
    assert {f"{m},none" for m in WORLD_OPEN_METRICS} <= results.keys() and "world_yes_no_accuracy,none" not in results
    report = json.loads((tmp_path / "out" / "report" / "world_significance.json").read_text())
    a = report["accuracy"]["a"]
    assert (
        a["all"]["n"] == 14
        and a["color/open"]["n"] == 2
        and "color/yes_no" not in a
        and a["all"]["low"] <= a["all"]["accuracy"] <= a["all"]["high"]
    )
    assert a["all"]["accuracy"] == pytest.approx(100 * results["world_accuracy,none"])
    same = report["paired"]["a vs b"]["all"]  # one model twice: greedy answers agree question by question
    assert (same["first_only"], same["second_only"], same["p"], same["significant"]) == (0, 0, 1.0, False)


def test_local_data_is_written_where_missing_or_stale_and_real_data_is_kept(tmp_path, capsys):
    from dcr_mllm.evaluation.mllm.eval_data import DATA_VERSION
    from dcr_mllm.evaluation.mllm.run import ensure_local_data, local_folders, stand_in_folders, synthetic_folders
    from dcr_mllm.io import generated_from

    assert local_folders(["world_local"]) == local_folders(["world_local_open"]) == {"world"} and local_folders(
        ["dcr_suite_local"]
    ) == {"mmvp", "pope"}
    assert local_folders(["mmvp", "pope_adv"]) == set()  # lmms-eval's own tasks read the hub's data
    (tmp_path / "mmvp").mkdir()
    (tmp_path / "mmvp" / "generated.json").write_text(
        json.dumps({"source": "/data/MMVP"})
    )  # prepared from the real benchmark
    (tmp_path / "mmvp" / "test.parquet").write_bytes(b"real")
    (tmp_path / "pope").mkdir()
    (tmp_path / "pope" / "generated.json").write_text(
        json.dumps({"generator": "synthetic-pope", "version": 0, "seed": 0})
    )  # stale
    assert stand_in_folders(tmp_path, ["dcr_suite_local", "mmvp"]) == ["pope"]  # the real MMVP is kept
    ensure_local_data(tmp_path, {"mmvp", "pope"})
    assert "writing synthetic stand-ins for pope" in capsys.readouterr().out
    assert synthetic_folders(tmp_path, {"mmvp", "pope"}) == {"pope": "synthetic-pope"}
    assert (tmp_path / "mmvp" / "test.parquet").read_bytes() == b"real"
    assert (
        generated_from(tmp_path / "pope")["version"] == DATA_VERSION
        and (tmp_path / "pope" / "random.parquet").is_file()
    )


def test_eval_mllm_uses_the_hub_unless_told_or_every_task_is_local(monkeypatch):
    from dcr_mllm.evaluation.mllm.run import hub_environment

    offline = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert hub_environment(["dcr_suite"], offline=False) == {}  # hub data: fetched where not cached
    assert hub_environment(["dcr_suite"], offline=True) == offline
    assert hub_environment(["dcr_suite_local", "world_local_open"], offline=False) == offline  # no network needed
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub_environment(["dcr_suite"], offline=False) == offline
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert hub_environment(["mmvp", "dcr_suite_local"], offline=False) == {}


def test_task_list_shows_the_perception_suite(setup):
    _, env = setup
    listing = lmms_eval(env, "tasks", "list", "--include-path", str(REPO / "eval_tasks")).stdout
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
        str(root / "out_perception"),
    )
    results = results_of(root / "out_perception")
    cv = results["cv_bench_local"]
    assert {"lmms_eval_accuracy,none", "paper_score,none"} <= set(cv) and "acc,none" in results["countbenchqa_local"]
    (samples,) = list((root / "out_perception").rglob("*cv_bench_local*.jsonl"))
    records = [json.loads(line)["paper_score"] for line in samples.read_text().splitlines()]
    assert sorted({r["source"] for r in records}) == ["ADE20K", "COCO", "Omni3D"] and len(records) == 6
    assert cv["lmms_eval_accuracy,none"] == pytest.approx(cv_bench_lmms_eval_accuracy(records))
    assert cv["paper_score,none"] == pytest.approx(cv_bench_paper_score(records))
