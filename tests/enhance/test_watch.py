"""Evaluation while the LoRA stage trains: the same weights as without it (also across a kill and
resume), the curve in eval.jsonl / metrics.jsonl / eval.png, and settings checked before anything runs."""

import json
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dcr_mllm.cli import main

COMMON = ["data.synthetic_samples=32", "data.synthetic_shards=4", "lora.r=4", "lora.alpha=4",
          *(f"{stage}.{s}" for stage in ("projector_stage", "lora_stage") for s in ("micro_batch_size=4", "num_workers=0", "lr=1e-3")),
          "projector_stage.max_steps=2", "lora_stage.max_steps=4", "lora_stage.save_every=1"]


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
    assert main(["enhance", "--stage", "lora", f"output_dir={run}", *COMMON, *extra]) == 0
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
    assert "| step | world/probe_global/fine_mean" in capsys.readouterr().out
    assert not (plain / "lora" / "eval.jsonl").exists()


def test_a_killed_and_resumed_run_reaches_the_same_weights_and_the_same_curve(projector_run, monkeypatch):
    from dcr_mllm.training import engine

    reference = lora_run(projector_run, "watched", *watched(projector_run))
    original = engine.Trainer._optimizer_step

    def stop_at_three(self, data, step_fn):
        metrics = original(self, data, step_fn)
        if self.step == 2:  # after this step (the third) the run is stopped, as a cluster stops it
            os.kill(os.getpid(), signal.SIGTERM)
        return metrics

    monkeypatch.setattr(engine.Trainer, "_optimizer_step", stop_at_three)
    with pytest.raises(SystemExit):
        lora_run(projector_run, "killed", *watched(projector_run))
    monkeypatch.setattr(engine.Trainer, "_optimizer_step", original)
    killed = projector_run / "killed"
    assert [row["step"] for row in rows(killed / "lora" / "eval.jsonl")] == [0, 2]
    (killed / "lora" / "eval.jsonl").open("a").write(json.dumps({"step": 4, "eval/world/pairs/mean": -1.0}) + "\n")  # written after the checkpoint
    lora_run(projector_run, "killed", *watched(projector_run))
    assert same_weights(killed, reference)
    assert rows(killed / "lora" / "eval.jsonl") == rows(reference / "lora" / "eval.jsonl")


@pytest.mark.parametrize("overrides, message", [
    (["eval.every=2"], "eval.benchmarks is empty"),
    (["eval.benchmarks=[{name: world, data: /x}]"], "eval.benchmarks are read only with eval.every > 0"),
    (["eval.every=2", "eval.benchmarks=[{name: world, data: /no/such/folder}]"], "data folder /no/such/folder does not exist"),
    (["eval.every=2", "eval.benchmarks=[{name: classification, data: /x, pairs_per_attribute: 3}]"], "read only by the world benchmark"),
    (["eval.every=-1"], "eval.every must be 0"),
])
def test_bad_eval_settings_fail_in_one_line_before_anything_runs(tiny, tmp_path, capsys, overrides, message):
    assert main(["enhance", f"output_dir={tmp_path / 'out'}", *overrides]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "out").exists()
