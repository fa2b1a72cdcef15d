"""Models that never exist whole on one rank: under ZeRO-3 they are built partitioned and their
weights are streamed in one module at a time.

Building a 7B/13B model in float32 on every rank before ZeRO-3 partitions it costs 28-52 GB per
process for a moment. Inside ``empty_init`` with the engine's DeepSpeed config, DeepSpeed's
``zero.Init`` partitions each module's parameters as soon as the module is created, in the
training dtype (bf16 when the run is bf16), and transformers' ``no_init_weights`` skips the
random initialisation the checkpoint overwrites anyway. ``load_streamed`` then gathers one
module's parameters at a time, lets rank 0 copy the values in, and partitions them again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable

import torch
import torch.distributed as dist
from torch import nn

from dcr_mllm.training.config import TrainConfig
from dcr_mllm.training.distributed import init_distributed
from dcr_mllm.training.ds_config import deepspeed_config


def zero3_config(cfg: TrainConfig) -> dict | None:
    """The engine's DeepSpeed config when the stage runs ZeRO-3 (the model must then be built
    partitioned, with exactly the engine's dtype and partitioning), else None."""
    if cfg.zero_stage != 3:
        return None
    dist_info = init_distributed()
    if dist_info.device.type == "cpu":
        return_freed_buffers_to_the_os()
    return deepspeed_config(cfg, dist_info)


def return_freed_buffers_to_the_os() -> None:
    """On CPU under ZeRO-3: every allocation over 128 KiB its own mapping, returned to the OS when freed.

    glibc's dynamic mmap threshold rises after the first large free and then serves buffers up to
    32 MB from the heap; ZeRO-3's per-module full-size buffers (created, partitioned, freed) then
    stay in the process as fragmented heap, and a rank's memory no longer follows its live tensors
    (bench/zero3_memory.py: 0.87 x the float32 model instead of 0.38 x). Same as
    MALLOC_MMAP_THRESHOLD_=131072; a no-op where the C library is not glibc. Only there: every
    large buffer then costs a fresh mapping and its page faults, which made a one-process ZeRO-2
    step of the world's LLaVA 1.7x slower (bench/llava_step.py).
    """
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_mmap_threshold = -3  # malloc.h
    libc.mallopt(m_mmap_threshold, 128 * 1024)


def config_dtype(ds_config: dict) -> torch.dtype:
    """The dtype DeepSpeed trains in under ``ds_config``."""
    if ds_config.get("bf16", {}).get("enabled") is True:
        return torch.bfloat16
    if ds_config.get("fp16", {}).get("enabled") is True:
        return torch.float16
    return torch.float32


@contextlib.contextmanager
def empty_init(dtype: torch.dtype, ds_config: dict | None = None):
    """Modules created inside get uninitialised parameters in ``dtype`` (load them afterwards);
    with ``ds_config`` (ZeRO-3) each module's parameters are partitioned as it is created."""
    from transformers.initialization import no_init_weights

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(no_init_weights())
            if ds_config is not None:
                import deepspeed
                from transformers.integrations.deepspeed import prevent_arange_dtype_change

                stack.enter_context(prevent_arange_dtype_change())  # RoPE buffers stay float32
                stack.enter_context(deepspeed.zero.Init(config_dict_or_path=ds_config))
            yield
    finally:
        torch.set_default_dtype(previous)


def is_partitioned(param: torch.Tensor) -> bool:
    return hasattr(param, "ds_id")


def gathered(params: Iterable[torch.Tensor], modifier_rank: int | None = 0):
    """Full copies of the partitioned ones among ``params`` inside the block; what rank
    ``modifier_rank`` writes there is partitioned again on exit. A no-op without ZeRO-3."""
    params = [p for p in params if is_partitioned(p)]
    if not params:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank)


def writes_here(params: Iterable[torch.Tensor]) -> bool:
    """Whether this rank writes values into ``params`` inside ``gathered``: rank 0 for
    partitioned ones (the others receive them), every rank otherwise."""
    return not any(is_partitioned(p) for p in params) or not dist.is_initialized() or dist.get_rank() == 0


@torch.no_grad()
def load_streamed(model: nn.Module, value: Callable[[str], torch.Tensor], names: set[str]) -> None:
    """Copy ``value(name)`` into each parameter named in ``names``, one module at a time; every rank
    must call it together under ZeRO-3 (only rank 0 reads the values).

    Args:
        model: the model whose parameters are filled.
        value: a parameter's full name -> its value (full shape; cast on copy).
        names: full names of the parameters to fill; the others keep their values.
    """
    for prefix, module in model.named_modules():
        params = {f"{prefix}.{n}" if prefix else n: p for n, p in module.named_parameters(recurse=False)}
        params = {name: p for name, p in params.items() if name in names}
        if not params:
            continue
        with gathered(params.values()):
            if writes_here(params.values()):
                for name, param in params.items():
                    param.copy_(value(name))


@contextlib.contextmanager
def transformers_zero3(ds_config: dict):
    """Inside, transformers' ``from_pretrained`` builds under ``zero.Init`` with ``ds_config`` and
    loads the weights partitioned (rank 0 reads the checkpoint, each module is gathered in turn)."""
    from transformers.integrations import HfDeepSpeedConfig
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    keep = HfDeepSpeedConfig(ds_config)  # transformers holds a weak reference only
    try:
        yield keep
    finally:
        unset_hf_deepspeed_config()


def unlinked_masters(optimizer) -> dict[int, torch.Tensor]:
    """Without ZeRO, DeepSpeed's bf16 mode wraps our optimizer in its FP16_UnfusedOptimizer, which
    keeps fp32 masters that ``safe_get_full_fp32_param`` does not find: {id(param): its master}."""
    from deepspeed.runtime.fp16.unfused_optimizer import FP16_UnfusedOptimizer

    if not isinstance(optimizer, FP16_UnfusedOptimizer):
        return {}
    return {
        id(param): master
        for fp32_group, group in zip(optimizer.fp32_groups, optimizer.fp16_groups)
        for master, param in zip(fp32_group, group)
    }


def fp32_master(param: nn.Parameter, unlinked: dict[int, torch.Tensor]) -> torch.Tensor:
    """A full CPU copy of the optimizer's fp32 master of a trainable parameter: from ``unlinked``
    (``unlinked_masters``), else DeepSpeed's own lookup under ZeRO 1-3 (collective: every rank
    calls it for the same parameters), else the parameter itself (fp32 without ZeRO)."""
    import deepspeed
    from deepspeed.utils import safe_get_full_fp32_param

    master = unlinked.get(id(param))
    if master is None:
        master = safe_get_full_fp32_param(param)
    if master is None:
        with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
            master = param.detach().float()
    return master.detach().cpu().clone()


def save_dtype(param: nn.Parameter) -> torch.dtype:
    """The dtype a trained parameter is saved in: the one it had before DeepSpeed, except for a
    parameter that ZeRO-3 built partitioned directly in the training dtype, whose base dtype is
    unknown: its fp32 master is saved whole."""
    return torch.float32 if is_partitioned(param) else param.dtype
