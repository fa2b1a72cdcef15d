"""Resume that can be trusted, through the CLI on the tiny preset: broken or dangling checkpoints
fall back to the newest intact one, changed settings are refused unless allowed (and then take
effect), a finished run whose max_steps is raised continues and is exported again, and
metrics.jsonl never repeats a step."""

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dcr_mllm.cli import main
from dcr_mllm.components.build_once import MARKER
from dcr_mllm.training.checkpoints import config_changes
from dcr_mllm.training.safe_state import check_safetensors

DATA = ["data.synthetic_samples=32", "data.synthetic_shards=4"]
PROJECTOR = ["max_steps=4", "micro_batch_size=4", "num_workers=0", "lr=1e-3", "save_every=2", "keep_last=3"]
LORA = ["max_steps=2", "micro_batch_size=4", "num_workers=0", "lr=1e-3", "save_every=1", "keep_last=3"]


def enhance(run_dir: Path, *extra: str, stage: str | None = "projector") -> int:
    flags = [arg for arg in extra if arg.startswith("--")]
    given = [a for a in extra if a not in flags]
    defaults = [*DATA, *(f"projector_stage.{s}" for s in PROJECTOR), *(f"lora_stage.{s}" for s in LORA)]
    args = [
        "enhance",
        *flags,
        *(["--stage", stage] if stage else []),
        f"output_dir={run_dir}",
        *without_keys(defaults, given),
        *given,
    ]
    return main(args)


def without_keys(defaults: list[str], given: list[str]) -> list[str]:
    """The defaults whose key the test does not set itself (a key given twice is refused)."""
    keys = {item.partition("=")[0] for item in given}
    return [item for item in defaults if item.partition("=")[0] not in keys]


def error_line(capsys) -> str:
    """The CLI's one error line (stderr also carries progress bars and library warnings)."""
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, errors
    return errors[0]


def steps(stage_dir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (stage_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def reference(tiny, tmp_path_factory):
    """One uninterrupted enhance run: projector 4 steps (checkpoints at 2 and 4), LoRA 2 steps, export."""
    root = tmp_path_factory.mktemp("resume") / "reference"
    assert enhance(root, stage=None) == 0
    return root


def interrupted(reference: Path, tmp_path: Path) -> Path:
    """A copy of the reference projector stage as a kill after its step-4 checkpoint leaves it."""
    run_dir = tmp_path / "run"
    shutil.copytree(reference / "projector", run_dir / "projector", ignore=shutil.ignore_patterns("logs"))
    os.symlink(reference / "data", run_dir / "data")
    (run_dir / "projector" / "train_state.json").unlink()
    (run_dir / "projector" / "trainable.safetensors").unlink()
    return run_dir


def assert_same_weights(run_dir: Path, reference: Path) -> None:
    resumed, finished = (
        load_file(run_dir / "projector" / "trainable.safetensors"),
        load_file(reference / "projector" / "trainable.safetensors"),
    )
    assert resumed.keys() == finished.keys()
    for name in (
        finished
    ):  # to float rounding: CPU reductions under varying thread load differ in the last bits, resumed or not
        torch.testing.assert_close(
            resumed[name], finished[name], rtol=1e-5, atol=1e-7, msg=f"{name} differs from the uninterrupted run"
        )


def test_truncated_latest_checkpoint_resumes_from_the_previous_one(reference, tmp_path, capsys):
    run_dir = interrupted(reference, tmp_path)
    state = run_dir / "projector" / "checkpoints" / "step_000004" / "rank0_state.safetensors"
    os.truncate(state, state.stat().st_size // 2)
    assert enhance(run_dir) == 0
    out = capsys.readouterr().out
    assert "checkpoint step_000004 is incomplete (rank0_state.safetensors truncated); resuming from step_000002" in out
    assert_same_weights(run_dir, reference)
    assert steps(run_dir / "projector") == [1, 2, 3, 4], "the steps logged after the checkpoint are logged once"


def test_dangling_latest_resumes_from_the_newest_intact_checkpoint(reference, tmp_path, capsys):
    run_dir = interrupted(reference, tmp_path)
    shutil.rmtree(run_dir / "projector" / "checkpoints" / "step_000004")
    assert enhance(run_dir) == 0
    assert "step_000004 named by" in capsys.readouterr().out
    assert_same_weights(run_dir, reference)


def test_no_intact_checkpoint_is_a_one_line_error(reference, tmp_path, capsys):
    run_dir = interrupted(reference, tmp_path)
    checkpoints = run_dir / "projector" / "checkpoints"
    (checkpoints / "step_000002" / "mp_rank_00_model_states.pt").unlink()
    with open(checkpoints / "step_000004" / "rank0_state.safetensors", "r+b") as f:
        f.write(b"\xff" * 8)  # a header length far past the end of the file
    assert enhance(run_dir) == 2
    err = error_line(capsys)
    assert f"no intact checkpoint in {checkpoints}" in err and f"delete {checkpoints}" in err
    assert "mp_rank_00_model_states.pt missing" in err


def test_changed_learning_rate_is_refused_unless_allowed_and_then_takes_effect(reference, tmp_path, capsys):
    run_dir = interrupted(reference, tmp_path)
    shutil.rmtree(run_dir / "projector" / "checkpoints" / "step_000004")
    (run_dir / "projector" / "checkpoints" / "latest").write_text("step_000002")
    assert enhance(run_dir, "projector_stage.lr=5e-4") == 2
    err = error_line(capsys)
    assert "lr: 0.001 -> 0.0005" in err and "--allow-config-change" in err
    assert not (run_dir / "projector" / "trainable.safetensors").exists()

    assert enhance(run_dir, "--allow-config-change", "projector_stage.lr=5e-4") == 0
    logged = [json.loads(line) for line in (run_dir / "projector" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in logged] == [1, 2, 3, 4]
    assert [m["lr"] for m in logged] == [1e-3, 1e-3, 5e-4, 5e-4], "the new learning rate applies from the resumed step"
    stored = json.loads((run_dir / "projector" / "checkpoints" / "config.json").read_text())
    assert stored["lr"] == 5e-4, "the accepted settings become the checkpoint's"


def test_raised_max_steps_continues_a_finished_run_and_exports_again(reference, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir, ignore=shutil.ignore_patterns("logs"))
    before = json.loads((run_dir / "lora" / "train_state.json").read_text())
    assert json.loads((run_dir / "tower" / MARKER).read_text()) == {"lora": before["weights_sha256"]}
    assert enhance(run_dir, stage=None) == 0
    assert "already finished" in capsys.readouterr().out  # unchanged settings: nothing to do

    assert enhance(run_dir, "lora_stage.max_steps=3", stage=None) == 0
    assert "continuing the finished run from step 2 to max_steps 3" in capsys.readouterr().out
    after = json.loads((run_dir / "lora" / "train_state.json").read_text())
    assert after["finished"] and after["step"] == 3 and after["weights_sha256"] != before["weights_sha256"]
    assert steps(run_dir / "lora") == [1, 2, 3]
    assert steps(run_dir / "projector") == [1, 2, 3, 4], "the projector stage, already at its max_steps, is left alone"
    assert json.loads((run_dir / "tower" / MARKER).read_text()) == {"lora": after["weights_sha256"]}
    old_tower = load_file(reference / "tower" / "model.safetensors")
    new_tower = load_file(run_dir / "tower" / "model.safetensors")
    assert any(not torch.equal(old_tower[k], new_tower[k]) for k in old_tower), (
        "the tower is exported from the new weights"
    )


def test_max_steps_may_grow_only_where_the_schedule_ignores_it():
    constant = {"max_steps": 4, "scheduler": "constant", "warmup_steps": 0, "warmup_ratio": 0.0, "lr": 1e-3}
    assert config_changes(constant, {**constant, "max_steps": 8}) == []
    assert config_changes(constant, {**constant, "max_steps": 2}) == [("max_steps", 4, 2)]
    cosine = {**constant, "scheduler": "cosine"}
    assert config_changes(cosine, {**cosine, "max_steps": 8}) == [("max_steps", 4, 8)]
    ratio = {**constant, "warmup_ratio": 0.1}
    assert config_changes(ratio, {**ratio, "max_steps": 8}) == [("max_steps", 4, 8)]
    assert config_changes({"data": {"shards": "a"}}, {"data": {"shards": "b"}}) == [("data.shards", "a", "b")]


def test_check_safetensors_reads_the_header(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "t.safetensors"
    save_file({"a": torch.zeros(64), "b": torch.ones(3)}, path)
    assert check_safetensors(path) is None
    size = path.stat().st_size
    os.truncate(path, size - 4)
    assert check_safetensors(path) == "truncated"
    os.truncate(path, 5)
    assert check_safetensors(path) == "truncated"
    path.write_bytes((10).to_bytes(8, "little") + b"not json!!")
    assert check_safetensors(path) == "has a corrupt header"
