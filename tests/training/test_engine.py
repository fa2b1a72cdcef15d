"""The training engine on a toy model with real DeepSpeed: accumulation stays in step when a
micro-batch is non-finite, and bf16 runs save (and resume from) the fp32 master weights."""

import json
import logging
import shutil
import sys

import pytest
import torch
from deepspeed.utils import safe_get_full_fp32_param
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import IterableDataset

from dcr_mllm.data.position import ReadPosition
from dcr_mllm.errors import DcrError
from dcr_mllm.training import ResumableBatches, TrainConfig, Trainer, init_distributed
from dcr_mllm.training.optim import lr_lambda


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 3)

    def forward(self, x):
        return self.linear(x.to(self.linear.weight.dtype)).float().pow(2).mean()


class Numbers(IterableDataset):
    """Sample i is {"index": i, "x": four numbers from i}; resumable like the real datasets."""

    def __init__(self):
        self.position, self.epoch = ReadPosition(), 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __iter__(self):
        _, skip = self.position.begin(0, 1)
        for i in range(64):
            self.position.done += 1
            if self.position.done > skip:
                yield {"index": i, "x": torch.linspace(-1, 1, 4) * (i % 5 + 1)}


def train(tmp_path, nan_at=(), **settings):
    torch.manual_seed(0)
    cfg = TrainConfig(
        **{
            "max_steps": 3,
            "micro_batch_size": 1,
            "save_every": 1,
            "keep_last": 3,
            "num_workers": 0,
            "lr": 0.05,
            "scheduler": "cosine",
            "warmup_steps": 1,
            "zero_stage": 2,
            **settings,
        }
    )
    trainer = Trainer(Toy(), cfg, tmp_path, seed=0, dist_info=init_distributed())
    losses = {}

    def step(engine, batch, generator):
        loss = engine(batch["x"])
        if batch["index"] in nan_at:
            loss = loss * float("nan")
        losses[batch["index"]] = loss.item()
        return loss, {"loss": loss.item(), "index": float(batch["index"])}

    trainer.fit(ResumableBatches(Numbers(), None, None, 0), step)
    return trainer, cfg, losses


def test_a_nonfinite_micro_batch_is_replaced_and_accumulation_stays_in_step(tmp_path):
    trainer, cfg, losses = train(tmp_path, nan_at={3}, grad_accum=2)
    assert trainer.step == 3 and trainer.engine.global_steps == 3, "one DeepSpeed optimizer step per trainer step"
    assert trainer.engine.get_lr()[0] == pytest.approx(cfg.lr * lr_lambda(cfg)(3)), "the scheduler stepped three times"
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["index"] for m in logged] == [0.5, 3.0, 5.5], "micro-batches 0+1, 2+4 (3 replaced), 5+6"
    assert logged[1]["loss"] == pytest.approx((losses[2] + losses[4]) / 2), "the logged loss is the mean of the step's"
    assert logged[1]["nonfinite_total"] == 1


def test_max_nonfinite_in_a_row_still_aborts(tmp_path):
    with pytest.raises(DcrError, match="3 non-finite losses in a row"):
        train(tmp_path, nan_at={2, 3, 4}, grad_accum=2, max_nonfinite=3)


@pytest.mark.parametrize("zero_stage", [0, 2, 3])
def test_bf16_saves_and_resumes_from_fp32_masters(tmp_path, zero_stage):
    trainer, _, _ = train(tmp_path / "whole", precision="bf16", zero_stage=zero_stage)
    saved = load_file(tmp_path / "whole" / "trainable.safetensors")
    optimizer = trainer.engine.optimizer
    if zero_stage == 0:  # DeepSpeed's FP16_UnfusedOptimizer: fp32 masters beside the bf16 parameters
        (masters,), (group,) = optimizer.fp32_groups, optimizer.fp16_groups
        masters = dict(zip(map(id, group), masters))
    for name, param in trainer.engine.module.named_parameters():
        assert param.dtype == torch.bfloat16, "DeepSpeed's bf16 mode trains a bf16 module"
        master = (masters[id(param)] if zero_stage == 0 else safe_get_full_fp32_param(param)).cpu()
        assert saved[name].dtype == torch.float32 and torch.equal(saved[name], master), f"{name}: not the fp32 master"
        assert not torch.equal(saved[name], saved[name].bfloat16().float()), f"{name}: bf16-rounded"

    # resume the same run from its step-1 checkpoint: the bf16 optimizer state must round-trip
    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "whole" / "checkpoints", resumed / "checkpoints")
    (resumed / "checkpoints" / "latest").write_text("step_000001")
    train(resumed, precision="bf16", zero_stage=zero_stage)
    again = load_file(resumed / "trainable.safetensors")
    for name in saved:
        assert torch.equal(again[name], saved[name]), f"{name} differs after resuming a bf16 run"


def test_training_status_goes_to_stdout_and_warnings_to_stderr_once(capsys):
    from dcr_mllm.training.log import logger

    root = logging.StreamHandler(sys.stderr)  # an application's own handler must not print them again
    logging.getLogger().addHandler(root)
    try:
        logger.info("stage lora: already finished")
        logger.warning("non-finite loss at step 3")
    finally:
        logging.getLogger().removeHandler(root)
    out, err = capsys.readouterr()
    assert out == "stage lora: already finished\n"
    assert err == "WARNING dcr_mllm.training: non-finite loss at step 3\n"
