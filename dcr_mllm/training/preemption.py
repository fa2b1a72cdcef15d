"""Preemption: a cluster's SIGTERM (or the SIGUSR1 Slurm can send ahead of it) becomes a checkpoint
and a clean exit, not lost work.

Slurm and Kubernetes send SIGTERM and kill the job a grace period later. Inside ``Trainer.fit``
the first SIGTERM or SIGUSR1 is only recorded; before each optimizer step the ranks agree on
whether any of them got one (one small all-reduce), and if so every rank saves the checkpoint
of the step just finished and exits with 128 + the signal's number (143 for SIGTERM), the
shell's convention for a job ended by a signal. Running the same command again resumes.
"""

from __future__ import annotations

import signal
import threading

import torch
import torch.distributed as dist

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
_received = 0  # the signal recorded in this process (0: none); kept across stages, so a later stage stops too


class Preempted(SystemExit):
    """Raised on every rank once the checkpoint is saved; exits the process with 128 + signum. The
    signal is then handled: a caller that goes on in the same process (a library user) starts clean."""

    def __init__(self, signum: int):
        global _received
        super().__init__(128 + signum)
        self.signum = signum
        _received = 0


def _record(signum, frame) -> None:
    global _received
    _received = _received or signum


class catch_preemption:
    """While active (main thread only), SIGTERM and SIGUSR1 are recorded instead of ending the process."""

    def __enter__(self):
        self.previous = {}
        if threading.current_thread() is threading.main_thread():
            self.previous = {signum: signal.signal(signum, _record) for signum in SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


def agreed_signal(device: torch.device) -> int:
    """The signal any rank has received (the highest number if several), on every rank; 0 for none."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return _received
    value = torch.tensor([_received], dtype=torch.int64, device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return int(value.item())


def ignore_in_workers(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: a signal sent to the whole process group (as Slurm does) must
    not kill the data workers while the main process saves; they end with it."""
    for signum in SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
