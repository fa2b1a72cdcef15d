"""Evaluation while the LoRA stage trains: the same weights as without it (also across a kill and
resume), the curve in eval.jsonl / metrics.jsonl / eval.png, and settings checked before anything runs."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from dcr_mllm.cli import main

COMMON = [
    "data.synthetic_samples=32",
    "data.synthetic_shards=4",
    "lora.r=4",
    "lora.alpha=4",
    *(
        f"{stage}.{s}"
        for stage in ("projector_stage", "lora_stage")
        for s in ("micro_batch_size=4", "num_workers=0", "lr=1e-3")
    ),
    "projector_stage.max_steps=2",
    "lora_stage.max_steps=4",
    "lora_stage.save_every=1",
]


@pytest.fixture(autouse=True)
def one_thread():
    """Bitwise comparisons need one thread: a multi-threaded CPU kernel may sum in another order
    from run to run (the stage scripts' side job and the world build run on one thread too)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def projector_run(tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("watch")
    assert main(["enhance", "--stage", "projector", f"output_dir={root / 'base'}", *COMMON]) == 0
    assert main(["make-eval-data", "world", "--output", str(root / "val"), "--count", "24", "--seed", "3"]) == 0
    return root


def lora_run(projector_run: Path, name: str, *extra: str) -> Path:
    run = projector_run / name
    if not run.exists():
        shutil.copytree(projector_run / "base" / "projector", run / "projector")
        os.symlink(projector_run / "base" / "data", run / "data")
    keys = {item.partition("=")[0] for item in extra}
    common = [item for item in COMMON if item.partition("=")[0] not in keys]  # a key given twice is refused
    assert main(["enhance", "--stage", "lora", f"output_dir={run}", *common, *extra]) == 0
    return run


def watched(projector_run: Path) -> list[str]:
    return ["eval.every=2", f"eval.benchmarks=[{{name: world, data: {projector_run / 'val'}, pairs_per_attribute: 2}}]"]


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def same_weights(a: Path, b: Path) -> bool:
    ours, theirs = load_file(a / "lora" / "trainable.safetensors"), load_file(b / "lora" / "trainable.safetensors")
    return ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_evaluation_during_training_leaves_the_weights_bitwise_as_without_it(projector_run, capsys):
    plain = lora_run(projector_run, "plain")
    watched_run = lora_run(projector_run, "watched", *watched(projector_run))
    assert same_weights(plain, watched_run)
    curve = rows(watched_run / "lora" / "eval.jsonl")
    assert [row["step"] for row in curve] == [0, 2, 4]
    assert all(0 <= row["eval/world/pairs/mean"] <= 100 for row in curve)
    assert curve[0] != curve[2]  # the tower moved, and the curve shows it
    logged = {row["step"]: row for row in rows(watched_run / "lora" / "metrics.jsonl")}
    assert logged[2]["eval/world/probe_global/fine_mean"] == curve[1]["eval/world/probe_global/fine_mean"]
    assert "eval/world/pairs/mean" not in logged[1]
    assert (watched_run / "lora" / "eval.png").stat().st_size > 0
    assert "| step | world/probe_global/claim_mean" in capsys.readouterr().out
    assert not (plain / "lora" / "eval.jsonl").exists()


STOP_AT_THREE = """
import os, signal, sys
from dcr_mllm.cli import main
from dcr_mllm.training import engine
original = engine.Trainer._optimizer_step
def stop_at_three(self, data, step_fn):  # after the third step the run is stopped, as a cluster stops it
    metrics = original(self, data, step_fn)
    if self.step == 2:
        os.kill(os.getpid(), signal.SIGTERM)
    return metrics
engine.Trainer._optimizer_step = stop_at_three
sys.exit(main(sys.argv[1:]))
"""


def run_process(projector_run: Path, name: str, *code: str) -> subprocess.CompletedProcess:
    """A LoRA run with evaluation in a process of its own (one thread), as the command runs."""
    run = projector_run / name
    if not run.exists():
        shutil.copytree(projector_run / "base" / "projector", run / "projector")
        os.symlink(projector_run / "base" / "data", run / "data")
    argv = ["enhance", "--stage", "lora", f"output_dir={run}", *COMMON, *watched(projector_run)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, *(code or ["-m", "dcr_mllm.cli"]), *argv], env=env, capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
def test_a_killed_and_resumed_run_reaches_the_same_weights_and_the_same_curve(projector_run):
    assert run_process(projector_run, "whole").returncode == 0
    assert run_process(projector_run, "killed", "-c", STOP_AT_THREE).returncode == 143
    killed = projector_run / "killed"
    assert [row["step"] for row in rows(killed / "lora" / "eval.jsonl")] == [0, 2]
    with (killed / "lora" / "eval.jsonl").open("a") as f:  # a row written after the checkpoint, by a run killed then
        f.write(json.dumps({"step": 4, "eval/world/pairs/mean": -1.0}) + "\n")
    resumed = run_process(projector_run, "killed")  # the same command again
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert same_weights(killed, projector_run / "whole")
    assert rows(killed / "lora" / "eval.jsonl") == rows(projector_run / "whole" / "lora" / "eval.jsonl")


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["eval.every=2"], "eval.benchmarks is empty"),
        (["eval.benchmarks=[{name: world, data: /x}]"], "eval.benchmarks are read only with eval.every > 0"),
        (
            ["eval.every=2", "eval.benchmarks=[{name: world, data: /no/such/folder}]"],
            "data folder /no/such/folder does not exist",
        ),
        (
            ["eval.every=2", "eval.benchmarks=[{name: classification, data: /x, pairs_per_attribute: 3}]"],
            "read only by the world benchmark",
        ),
        (["eval.every=-1"], "eval.every must be 0"),
    ],
)
def test_bad_eval_settings_fail_in_one_line_before_anything_runs(tiny, tmp_path, capsys, overrides, message):
    assert main(["enhance", f"output_dir={tmp_path / 'out'}", *overrides]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_selection_exports_the_best_validation_step_and_the_card_says_so(projector_run):
    select = ["eval.every=1", watched(projector_run)[1], "eval.select=world/probe_global/fine_mean"]
    run = lora_run(projector_run, "selected", *select)
    curve = {row["step"]: row["eval/world/probe_global/fine_mean"] for row in rows(run / "lora" / "eval.jsonl")}
    assert sorted(curve) == [0, 1, 2, 3, 4]
    best = max(curve, key=lambda step: (curve[step], -step))
    from safetensors import safe_open

    with safe_open(run / "lora" / "selected.safetensors", "pt") as f:
        assert f.metadata()["step"] == str(best)
    card = (run / "tower" / "README.md").read_text()
    assert (
        f"Step {best} of the LoRA stage, the highest `world/probe_global/fine_mean`" in card
        and "a validation split" in card
    )
    assert all(f"| {step} | {value:.2f} |" in card for step, value in curve.items())
    if best:  # the selected weights are those of a run that stopped there (constant schedule: same first steps)
        short = lora_run(projector_run, f"stopped_at_{best}", f"lora_stage.max_steps={best}")
        selected_state = load_file(run / "lora" / "selected.safetensors")
        assert all(
            torch.equal(value, load_file(short / "lora" / "trainable.safetensors")[key])
            for key, value in selected_state.items()
        )


def test_selecting_on_test_data_is_refused_unless_allowed_and_then_the_card_says_so(projector_run, capsys):
    from dcr_mllm.world.scenes import world_eval_set

    test_set = world_eval_set(projector_run / "test", seed=1, count=24)  # the world's reported seed
    bench = f"eval.benchmarks=[{{name: world, data: {test_set}, pairs_per_attribute: 2}}]"
    argv = [
        "enhance",
        "--stage",
        "lora",
        f"output_dir={projector_run / 'on_test'}",
        *COMMON,
        "eval.every=2",
        bench,
        "eval.select=world/pairs/mean",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert (
        "the world's tower evaluation set" in err
        and "eval.allow_test_selection=true" in err
        and len(err.strip().splitlines()) == 1
    )
    mmvp = projector_run / "mmvp"
    mmvp.mkdir(exist_ok=True)
    assert (
        main([*argv[:-2], f"eval.benchmarks=[{{name: mmvp-vlm, data: {mmvp}}}]", "eval.select=mmvp-vlm/average"]) == 2
    )
    assert "MMVP-VLM, a test set" in capsys.readouterr().err
    shutil.copytree(projector_run / "base" / "projector", projector_run / "on_test" / "projector")
    os.symlink(projector_run / "base" / "data", projector_run / "on_test" / "data")
    assert main([*argv, "eval.allow_test_selection=true"]) == 0
    assert "**Chosen on test data**" in (projector_run / "on_test" / "tower" / "README.md").read_text()


def test_a_select_metric_the_benchmarks_do_not_report_stops_at_step_0(projector_run, capsys):
    run = projector_run / "typo"
    shutil.copytree(projector_run / "base" / "projector", run / "projector")
    os.symlink(projector_run / "base" / "data", run / "data")
    code = main(
        [
            "enhance",
            "--stage",
            "lora",
            f"output_dir={run}",
            *COMMON,
            *watched(projector_run),
            "eval.select=world/fine_mean",
        ]
    )
    assert (
        code == 2
        and "eval.select=world/fine_mean is not a metric the benchmarks report (world/probe_global/"
        in capsys.readouterr().err
    )
    assert not (run / "lora" / "metrics.jsonl").exists()


def test_export_tower_exports_any_kept_step_as_a_run_stopped_there_would(projector_run, capsys):
    run = lora_run(projector_run, "every_step", "lora_stage.keep_last=0")
    stopped = lora_run(projector_run, "stopped_at_2", "lora_stage.max_steps=2")
    assert main(["export-tower", str(run), "--step", "2"]) == 0
    exported, short = (
        load_file(run / "tower_step_2" / "model.safetensors"),
        load_file(stopped / "tower" / "model.safetensors"),
    )
    assert exported.keys() == short.keys() and all(torch.equal(exported[k], short[k]) for k in exported)
    assert "Step 2 of the LoRA stage, exported from its checkpoint" in (run / "tower_step_2" / "README.md").read_text()
    capsys.readouterr()
    assert main(["export-tower", str(run), "--step", "2"]) == 2  # never overwritten without --force
    assert "tower_step_2 exists; pass --force" in capsys.readouterr().err
    assert main(["export-tower", str(run), "--step", "7"]) == 2
    err = capsys.readouterr().err
    assert "step 7 is not kept" in err and "(kept: 1, 2, 3, 4)" in err and len(err.strip().splitlines()) == 1
    assert not (run / "tower_step_7").exists()
    assert main(["export-tower", str(projector_run / "val"), "--step", "1"]) == 2
    assert "config.yaml does not exist; RUN must be the output_dir" in capsys.readouterr().err


def test_the_last_step_is_always_evaluated(projector_run):
    from dcr_mllm.config import load_config
    from dcr_mllm.enhance.config import EnhanceConfig
    from dcr_mllm.enhance.watch import TowerWatch

    cfg = load_config(EnhanceConfig, None, ["tower=x", "denoiser=y", "eval.every=3"])
    watch = TowerWatch(cfg, projector_run, is_main=True)
    assert [step for step in range(8) if watch.due(step, last=7)] == [0, 3, 6, 7]


def test_an_export_is_hub_ready_and_push_tower_checks_everything_before_the_hub(
    projector_run, tmp_path, capsys, monkeypatch
):
    run = lora_run(projector_run, "stopped_at_2", "lora_stage.max_steps=2")
    tower = run / "tower"
    card = (tower / "README.md").read_text()
    metadata = yaml.safe_load(card.split("---\n")[1])
    assert metadata["library_name"] == "transformers" and metadata["license"] == "other"  # the tiny base names none
    assert "- budget: projector stage 2 steps of 4 images (8 images), lr 0.001; LoRA stage 2 steps of 4" in card
    report = tmp_path / "report"
    towers = ["--tower", "base=tiny-clip", "--tower", f"ours={tower}"]
    data = ["--benchmark", "world", "--data", str(projector_run / "val"), "--pairs-per-attribute", "2"]
    assert main(["eval-tower", *towers, *data, "--output", str(report)]) == 0
    capsys.readouterr()
    assert main(["push-tower", str(tower), "someone/tower", "--results", str(report), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "repository: someone/tower (public; created if absent)" in out and "model.safetensors" in out
    assert "1 evaluation report(s)" in out and out.strip().endswith("dry run: nothing uploaded")

    from dcr_mllm.enhance.share import evaluation_section

    section = evaluation_section(tower, [report])
    scores = json.loads((report / "results.json").read_text())
    metric, value = next(iter(scores["ours"].items()))
    assert "| metric | this tower (ours) | base |" in section and f"| {metric} | {value:.1f}" in section

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the real upload call, refused by the hub client here
    assert main(["push-tower", str(tower), "someone/tower"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "pushing to someone/tower failed" in err and "hf upload" in err

    for args, message in (
        ([str(tower), "not a repo id!"], "is not a hub repository id"),
        ([str(tower), "tower"], "names no owner"),
        ([str(run / "lora"), "someone/tower"], "is not a tower directory"),
        ([str(tower), "someone/tower", "--results", str(tmp_path)], "has no details.json"),
    ):
        assert main(["push-tower", *args, "--dry-run"]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and message in err, (args, err)
    (tower / "tokenizer_config.json").write_text((tower / "tokenizer_config.json").read_text() + "\n")
    assert main(["push-tower", str(tower), "someone/tower", "--results", str(report), "--dry-run"]) == 2
    assert "scored an earlier version of" in capsys.readouterr().err


def test_the_card_keeps_the_base_licence_and_names_its_hub_id():
    from dcr_mllm.enhance.export import card_metadata

    siglip_card = "---\nlicence_note: x\nlicense: apache-2.0\ntags:\n- vision\n---\n# SigLIP\n"
    metadata = card_metadata("siglip-so400m-384", siglip_card)
    assert metadata["license"] == "apache-2.0" and metadata["base_model"] == "google/siglip-so400m-patch14-384"
    assert card_metadata("/some/local/tower", "# a card without metadata\n") == {
        "library_name": "transformers",
        "license": "other",
        "tags": ["vision", "dcr-mllm", "dcr"],
        "pipeline_tag": "zero-shot-image-classification",
    }
