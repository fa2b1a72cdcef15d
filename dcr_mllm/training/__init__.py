"""One training engine for every stage: DeepSpeed ZeRO, per-rank seeds and data, safe resume."""

from dcr_mllm.training.checkpoints import is_finished, load_trainable_state
from dcr_mllm.training.config import TrainConfig
from dcr_mllm.training.distributed import DistInfo, barrier, init_distributed, rank_seed
from dcr_mllm.training.engine import Trainer
from dcr_mllm.training.loader import ResumableBatches
from dcr_mllm.training.zero import empty_init, gathered, load_streamed, zero3_config

__all__ = [
    "DistInfo",
    "ResumableBatches",
    "TrainConfig",
    "Trainer",
    "barrier",
    "empty_init",
    "gathered",
    "init_distributed",
    "is_finished",
    "load_streamed",
    "load_trainable_state",
    "rank_seed",
    "zero3_config",
]
