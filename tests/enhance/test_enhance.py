"""Stage one end to end on the tiny preset: two real processes under ZeRO-2/3, resume, bad input."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import CLIPModel

from dcr_mllm.cli import main

REPO = Path(__file__).resolve().parents[2]

TINY_RUN = {
    "tower": "tiny-clip",
    "denoiser": "tiny-sd",
    "seed": 0,
    "data": {"synthetic_samples": 64, "synthetic_shards": 8},
    "lora": {"r": 4, "alpha": 4, "dropout": 0.1},
    "projector_stage": {"max_steps": 3, "micro_batch_size": 4, "save_every": 2, "num_workers": 1, "lr": 1.0e-3},
    "lora_stage": {"max_steps": 3, "micro_batch_size": 4, "save_every": 2, "num_workers": 1, "lr": 1.0e-3},
}


def write_config(path: Path, **changes) -> Path:
    config = json.loads(json.dumps(TINY_RUN))
    for key, value in changes.items():
        section, _, name = key.rpartition("__")
        (config.setdefault(section, {}) if section else config)[name] = value
    path.write_text(yaml.safe_dump(config))
    return path


def run_cli(args, tiny, nproc=1, check=True, background=False):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DCR_MLLM_CACHE": str(Path(tiny["clip"]).parents[1])}
    prefix = (
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
        if nproc > 1
        else [sys.executable]
    )
    command = [*prefix, "-m", "dcr_mllm.cli", *args]
    if background:
        return subprocess.Popen(
            command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("zero_stage", [2, 3])
def test_two_processes_read_disjoint_data_and_agree(tiny, tmp_path, zero_stage):
    out = tmp_path / "run"
    config = write_config(
        tmp_path / "c.yaml",
        output_dir=str(out),
        projector_stage__zero_stage=zero_stage,
        lora_stage__zero_stage=zero_stage,
    )
    result = run_cli(["enhance", "--config", str(config)], tiny, nproc=2)
    assert f"enhanced tower: {out / 'tower'}" in result.stdout

    for stage in ("projector", "lora"):
        seen = [set((out / stage / "samples" / f"rank{r}.txt").read_text().split()) for r in (0, 1)]
        assert len(seen[0]) == len(seen[1]) == 3 * 4, "each rank consumed its own 3 batches of 4"
        assert not seen[0] & seen[1], "the two ranks must read disjoint samples"
        state = json.loads((out / stage / "train_state.json").read_text())
        assert state["world_size"] == 2 and state["step"] == 3 and len(state["weights_sha256"]) == 64

    base = CLIPModel.from_pretrained(tiny["clip"]).state_dict()
    enhanced = CLIPModel.from_pretrained(out / "tower").state_dict()
    changed = {k for k in base if not torch.equal(base[k], enhanced[k])}
    assert changed and all(k.startswith("vision_model.encoder.") for k in changed), "only the vision encoder trains"
    assert (out / "tower" / "README.md").is_file()


def test_resume_after_a_kill_reaches_the_same_weights(tiny, tmp_path):
    """Kill the LoRA stage mid-run (SIGKILL), restart it, and compare with an uninterrupted run."""
    lora = {
        "lora_stage__max_steps": 10,
        "lora_stage__save_every": 1,
        "lora_stage__keep_last": 2,
        "lora_stage__num_workers": 2,
        "lora_stage__micro_batch_size": 8,
    }
    whole = write_config(tmp_path / "whole.yaml", output_dir=str(tmp_path / "whole"), **lora)
    run_cli(["enhance", "--config", str(whole)], tiny)

    killed_dir = tmp_path / "killed"
    killed = write_config(tmp_path / "killed.yaml", output_dir=str(killed_dir), **lora)
    run_cli(["enhance", "--config", str(killed), "--stage", "projector"], tiny)
    process = run_cli(["enhance", "--config", str(killed), "--stage", "lora"], tiny, background=True)
    latest = killed_dir / "lora" / "checkpoints" / "latest"
    deadline = time.time() + 300
    while not (latest.is_file() and latest.read_text() >= "step_000003") and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (killed_dir / "lora" / "train_state.json").exists(), "the run must have been interrupted"

    result = run_cli(["enhance", "--config", str(killed)], tiny)
    assert "enhanced tower" in result.stdout
    resumed = load_file(killed_dir / "lora" / "trainable.safetensors")
    uninterrupted = load_file(tmp_path / "whole" / "lora" / "trainable.safetensors")
    assert resumed.keys() == uninterrupted.keys()
    for name in resumed:
        assert torch.equal(resumed[name], uninterrupted[name]), f"{name} differs after resume"
    assert len(list((killed_dir / "lora" / "checkpoints").glob("step_*"))) == 2, "keeps the last 2 checkpoints"

    again = run_cli(["enhance", "--config", str(killed)], tiny)
    assert "nothing to do" in again.stdout


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["projector_stage.max_stpes=3"], "unknown config key 'projector_stage.max_stpes'"),
        (["tower=/no/such/tower"], "unknown model '/no/such/tower'"),
        (["lora.targets=[qkv]"], "LoRA target 'qkv' matches no module"),
        (["projector.output_dim=64"], "projector output width 64 does not match the UNet cross-attention width 32"),
    ],
)
def test_bad_input_fails_before_training_with_one_line(tiny, tmp_path, capsys, overrides, message):
    out = tmp_path / "out"
    assert main(["enhance", f"output_dir={out}", *overrides]) == 2
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert last_line.startswith("error: ") and message in last_line
    assert not out.exists(), "nothing may be written for a config that cannot run"


def test_a_stage_made_from_another_tower_is_refused_and_overwrite_trains_it_again(tiny, tmp_path, capsys):
    import shutil

    from safetensors.torch import save_file

    tower_b = tmp_path / "tower_b"  # the tiny CLIP with other weights
    shutil.copytree(tiny["clip"], tower_b)
    weights = next(tower_b.glob("*.safetensors"))
    save_file({k: v + 0.01 if v.is_floating_point() else v for k, v in load_file(weights).items()}, weights)
    out = tmp_path / "out"
    args = ["enhance", "--stage", "projector", f"output_dir={out}", "data.synthetic_samples=8"]
    args += ["projector_stage.max_steps=1", "projector_stage.num_workers=0"]
    assert main([*args, f"tower={tiny['clip']}"]) == 0
    made_from = (out / "projector" / "made_from.json").read_text()
    capsys.readouterr()
    assert main([*args, f"tower={tower_b}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "projector was made from another tower (tower: " in err and "--overwrite" in err
    assert (out / "projector" / "made_from.json").read_text() == made_from
    assert main([*args, f"tower={tower_b}", "--overwrite"]) == 0
    assert (out / "projector" / "made_from.json").read_text() != made_from
    assert main([*args, f"tower={tower_b}"]) == 0 and "already finished" in capsys.readouterr().out
