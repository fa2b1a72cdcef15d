"""Preemption on a real two-rank run: SIGTERM to one rank (as a cluster sends it) makes every rank
finish its step, save a checkpoint and exit 143; running again reaches the uninterrupted weights."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[2]
STAGE = [
    "--stage",
    "projector",
    "tower=tiny-clip",
    "denoiser=tiny-sd",
    "data.synthetic_samples=64",
    "data.synthetic_shards=8",
    "projector_stage.micro_batch_size=2",
    "projector_stage.max_steps=40",
    "projector_stage.save_every=100",
    "projector_stage.num_workers=1",
    "projector_stage.lr=1e-3",
]


def launch(run_dir: Path, tiny) -> list[subprocess.Popen]:
    """Two ranks started as a cluster's launcher starts them: one process (and session) each, rank
    and rendezvous in the environment."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "DCR_MLLM_CACHE": str(Path(tiny["clip"]).parents[1]),
        "WORLD_SIZE": "2",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }
    command = [sys.executable, "-m", "dcr_mllm.cli", "enhance", *STAGE, f"output_dir={run_dir}"]
    return [
        subprocess.Popen(
            command,
            cwd=REPO,
            env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
            start_new_session=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(2)
    ]


def finish(processes: list[subprocess.Popen]) -> list[tuple[int, str]]:
    return [(p.wait(timeout=600), p.stdout.read()) for p in processes]


@pytest.mark.slow
@pytest.mark.distributed
def test_sigterm_saves_on_every_rank_exits_143_and_resumes_to_the_same_weights(tiny, tmp_path):
    reference = finish(launch(tmp_path / "whole", tiny))
    assert [code for code, _ in reference] == [0, 0], reference[0][1][-3000:]

    run_dir = tmp_path / "preempted"
    processes = launch(run_dir, tiny)
    metrics = run_dir / "projector" / "metrics.jsonl"
    deadline = time.time() + 300
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 3) and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(processes[1].pid, signal.SIGTERM)  # one rank only: the other learns it at the next step
    results = finish(processes)
    assert [code for code, _ in results] == [143, 143], results[0][1][-3000:]
    assert "SIGTERM received; checkpoint at step" in results[0][1]
    checkpoints = run_dir / "projector" / "checkpoints"
    tag = (checkpoints / "latest").read_text()
    step = int(tag.removeprefix("step_"))
    assert 3 <= step < 40 and not (run_dir / "projector" / "train_state.json").exists()
    assert all((checkpoints / tag / f"rank{rank}_state.safetensors").is_file() for rank in range(2))
    assert len(metrics.read_text().splitlines()) == step

    resumed = finish(launch(run_dir, tiny))
    assert [code for code, _ in resumed] == [0, 0], resumed[0][1][-3000:]
    assert json.loads((run_dir / "projector" / "train_state.json").read_text())["step"] == 40
    ours, theirs = (
        load_file(run_dir / "projector" / "trainable.safetensors"),
        load_file(tmp_path / "whole" / "projector" / "trainable.safetensors"),
    )
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert steps == list(range(1, 41))


def test_sigusr1_in_one_process_stops_after_the_current_step(tiny, tmp_path, monkeypatch):
    """Slurm's early warning (``--signal=USR1@90``): the same stop, exit 128 + 10, in a plain run."""
    from dcr_mllm.cli import main
    from dcr_mllm.training import engine

    fired = []
    original = engine.Trainer._optimizer_step

    def step_then_signal(self, data, step_fn):
        metrics = original(self, data, step_fn)
        if self.step == 1 and not fired:  # the handler records it; the loop stops before step 3
            fired.append(os.kill(os.getpid(), signal.SIGUSR1))
        return metrics

    monkeypatch.setattr(engine.Trainer, "_optimizer_step", step_then_signal)  # a real signal, at a known step
    with pytest.raises(SystemExit) as stopped:
        main(["enhance", *STAGE[:-2], "projector_stage.num_workers=0", f"output_dir={tmp_path / 'run'}"])
    assert stopped.value.code == 138
    assert (tmp_path / "run" / "projector" / "checkpoints" / "latest").read_text() == "step_000002"
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL  # the handler is gone with the run
