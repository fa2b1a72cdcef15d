"""Launching ``dcr-mllm`` for a pipeline step: the process layout, the device, one failure rule."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from dcr_mllm.errors import DcrError

#: two one-thread processes share two cores without stalling; a step on one CPU process runs so
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


class StepFailed(Exception):
    """A launched command failed; it has said why, and the pipeline exits with its status."""

    def __init__(self, returncode: int, message: str = ""):
        super().__init__(message)
        self.returncode, self.message = returncode, message


def cli_command(nproc: int, hostfile: str | None, argv: list[str]) -> list[str]:
    """``dcr-mllm ARGV`` on one process, torchrun on one node, or the DeepSpeed launcher across the
    nodes of a hostfile (``nproc`` is then processes per node)."""
    if nproc < 1:
        raise DcrError(f"--nproc {nproc}: give at least one process")
    if hostfile:
        if not Path(hostfile).is_file():
            raise DcrError(
                f"hostfile {hostfile} does not exist; pass DeepSpeed's hostfile (one 'host slots=N' line per node)"
            )
        launcher = Path(sys.executable).with_name("deepspeed")
        return [str(launcher), "--hostfile", hostfile, "--num_gpus", str(nproc), "--module", "dcr_mllm.cli", *argv]
    if nproc > 1:
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            str(nproc),
            "-m",
            "dcr_mllm.cli",
            *argv,
        ]
    return [sys.executable, "-m", "dcr_mllm.cli", *argv]


def run(command: list[str], env: dict[str, str] | None = None, log: Path | None = None, failure: str = "") -> None:
    """Run ``command`` (its output to ``log`` when given); a failure raises ``StepFailed`` with its status."""
    environment = {**os.environ, **(env or {})}
    if log is None:
        code = subprocess.run(command, env=environment).returncode
    else:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as out:
            code = subprocess.run(command, env=environment, stdout=out, stderr=subprocess.STDOUT).returncode
    if code:
        raise StepFailed(code, failure)


def on_one_cpu(nproc: int, hostfile: str | None) -> bool:
    """Whether the pipeline trains on this machine's CPU in one process (no GPU, no launcher)."""
    import torch

    return nproc == 1 and not hostfile and not torch.cuda.is_available()
