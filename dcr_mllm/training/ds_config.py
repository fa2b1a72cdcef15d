"""The DeepSpeed config a training stage runs under: the stage's settings, with the values a
user's DeepSpeed JSON (``deepspeed_json``) gives kept and its "auto" ones filled. The engine hands
it to ``deepspeed.initialize``; ``zero.zero3_config`` builds a ZeRO-3 model under the same one.
"""

from __future__ import annotations

from dcr_mllm.training.config import TrainConfig, deepspeed_json
from dcr_mllm.training.distributed import DistInfo


def deepspeed_config(cfg: TrainConfig, dist_info: DistInfo) -> dict:
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and dist_info.device.type == "cuda")
    ours = {
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": cfg.grad_accum,
        "train_batch_size": cfg.micro_batch_size * cfg.grad_accum * dist_info.world_size,
        "gradient_clipping": cfg.grad_clip,
        "zero_optimization": {"stage": 2 if cfg.zero_stage is None else cfg.zero_stage},
        "bf16": {"enabled": bf16},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
    }
    return _fill_auto(deepspeed_json(cfg, "training"), ours)


def _fill_auto(theirs: dict, ours: dict) -> dict:
    """ "auto" takes our value; the file's other values stay (``resolve_train_config`` has refused
    any that contradicts the config); our keys it lacks are added."""
    merged = dict(ours)
    for key, value in theirs.items():
        if value == "auto":
            continue
        if isinstance(value, dict) and isinstance(ours.get(key), dict):
            merged[key] = _fill_auto(value, ours[key])
        else:
            merged[key] = value
    return merged
