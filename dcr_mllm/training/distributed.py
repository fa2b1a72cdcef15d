"""Process-group setup that works the same for one process, torchrun, deepspeed and accelerate.

Every launcher sets RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT; a plain ``python``
run gets single-process defaults. GPUs use NCCL, CPUs gloo.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
#: the port a plain one-process run chose for itself; a process that inherits it was started by
#: such a run (not by a launcher, which sets its own port) and must choose again
SOLO_PORT = "DCR_MLLM_SOLO_PORT"


def child_environment(env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's) for a child that is not a rank of this run (lmms-eval,
    accelerate): without the launcher variables a plain one-process run set for itself, whose
    port this process holds."""
    env = dict(os.environ if env is None else env)
    if env.get(SOLO_PORT) and env.get(SOLO_PORT) == env.get("MASTER_PORT"):
        for key in (*LAUNCHER_VARIABLES, SOLO_PORT):
            env.pop(key, None)
    return env


def init_distributed() -> DistInfo:
    """Join (or create) the default process group and pick this process's device."""
    import deepspeed

    inherited_solo = os.environ.get(SOLO_PORT) and os.environ.get(SOLO_PORT) == os.environ.get("MASTER_PORT")
    if inherited_solo and not dist.is_initialized():
        # a child of a plain run: its launcher variables name the parent's port, which the parent holds
        for key in (*LAUNCHER_VARIABLES, SOLO_PORT):
            os.environ.pop(key, None)
    if "WORLD_SIZE" not in os.environ:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
        os.environ[SOLO_PORT] = os.environ["MASTER_PORT"]
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device, backend = torch.device("cuda", local_rank), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend=backend, verbose=False)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, device)


def rank_seed(seed: int, rank: int) -> int:
    """A distinct, reproducible seed per rank (noise, timesteps, augmentations, dropout)."""
    return (seed * 1_000_003 + rank * 7_919 + 17) % (2**63)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def any_true(flag: bool, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on any rank (ranks must agree to skip a step)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def all_gather_strings(value: str) -> list[str]:
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [value]
    gathered: list[str] = [""] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered
