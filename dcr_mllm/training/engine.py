"""The training engine every stage uses: DeepSpeed ZeRO, seeds, checkpoints, resume, logging.

DeepSpeed is used directly (not through accelerate): one fewer layer between the loop and
ZeRO, and its checkpoint engine is pluggable, which lets checkpoints be safetensors while
DeepSpeed keeps its partition-aware save/load for ZeRO-2 and ZeRO-3.

Layout of ``output_dir``::

    checkpoints/step_000050/   DeepSpeed state (safetensors content) + rank{r}_state.safetensors
    checkpoints/latest         name of the newest complete checkpoint
    trainable.safetensors      the trained parameters, gathered, written at the end
    train_state.json           {"finished": true, "step": N} once the run is complete
    metrics.jsonl, logs/       scalars (and TensorBoard events)

A checkpoint is written under a ``.partial`` name and renamed when every rank has written its
part, then ``latest`` is replaced atomically: a kill at any moment leaves the previous
checkpoint intact. Restarting with the same ``output_dir`` resumes from ``latest``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from dcr_mllm.errors import DcrError
from dcr_mllm.training.config import TrainConfig
from dcr_mllm.training.distributed import DistInfo, any_true, barrier, rank_seed
from dcr_mllm.training.safe_state import (
    load_tree,
    safetensors_checkpoint_engine,
    save_tree,
)

logger = logging.getLogger("dcr_mllm.training")
StepFn = Callable[[nn.Module, dict, torch.Generator], tuple[torch.Tensor, dict[str, float]]]


def lr_lambda(cfg: TrainConfig) -> Callable[[int], float]:
    """Linear warm-up, then constant or cosine decay to zero at max_steps."""
    warmup = cfg.warmup_steps or math.ceil(cfg.warmup_ratio * cfg.max_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.scheduler == "constant":
            return 1.0
        progress = (step - warmup) / max(1, cfg.max_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    """Trainable parameters, split by ``cfg.group_lrs`` (first matching key wins)."""
    groups: dict[float, list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            lr = next((lr for key, lr in cfg.group_lrs.items() if key in name), cfg.lr)
            groups.setdefault(lr, []).append(param)
    return [{"params": params, "lr": lr} for lr, params in groups.items()]


def deepspeed_config(cfg: TrainConfig, dist_info: DistInfo) -> dict:
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and dist_info.device.type == "cuda")
    ours = {
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": cfg.grad_accum,
        "train_batch_size": cfg.micro_batch_size * cfg.grad_accum * dist_info.world_size,
        "gradient_clipping": cfg.grad_clip,
        "zero_optimization": {"stage": cfg.zero_stage},
        "bf16": {"enabled": bf16},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
    }
    if not cfg.deepspeed:
        return ours
    path = Path(cfg.deepspeed)
    if not path.is_file():
        raise DcrError(f"DeepSpeed config {path} does not exist; fix training.deepspeed or leave it empty")
    try:
        theirs = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DcrError(f"DeepSpeed config {path} is not valid JSON ({err})") from None
    return _fill_auto(theirs, ours)


def _fill_auto(theirs: dict, ours: dict) -> dict:
    """The file's values win, except "auto", which takes ours; our keys it lacks are added."""
    merged = dict(ours)
    for key, value in theirs.items():
        if value == "auto":
            continue
        if isinstance(value, dict) and isinstance(ours.get(key), dict):
            merged[key] = _fill_auto(value, ours[key])
        else:
            merged[key] = value
    return merged


class Trainer:
    """Runs ``step_fn`` over batches for ``cfg.max_steps`` optimizer steps, resumably."""

    def __init__(self, model: nn.Module, cfg: TrainConfig, output_dir: str | Path, seed: int, dist_info: DistInfo):
        import deepspeed

        self.cfg, self.dist, self.output_dir = cfg, dist_info, Path(output_dir)
        self.checkpoint_dir = self.output_dir / "checkpoints"
        self.trainable_names = [name for name, p in model.named_parameters() if p.requires_grad]
        if not self.trainable_names:
            raise DcrError("nothing to train: every parameter is frozen; check the stage settings")
        optimizer = torch.optim.AdamW(param_groups(model, cfg), lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
        self.engine, _, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=deepspeed_config(cfg, dist_info)
        )
        self.engine.checkpoint_engine = safetensors_checkpoint_engine()
        # ranks share the run seed for model init (done by the recipe) but differ from here on
        torch.manual_seed(rank_seed(seed, dist_info.rank))
        self.generator = torch.Generator().manual_seed(rank_seed(seed, dist_info.rank))
        self.step = 0
        self.nonfinite_total = 0
        self.nonfinite_in_row = 0
        self.writer = None

    # ---------------------------------------------------------------- state
    def _rank_state(self, batches) -> dict:
        return {
            "step": self.step,
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state() if torch.cuda.is_available() else torch.empty(0, dtype=torch.uint8),
            "data": batches.state_dict(),
            "nonfinite_total": self.nonfinite_total,
            "nonfinite_in_row": self.nonfinite_in_row,
        }

    def save_checkpoint(self, batches) -> None:
        tag = f"step_{self.step:06d}"
        partial = f"{tag}.partial"
        self.engine.save_checkpoint(str(self.checkpoint_dir), tag=partial, save_latest=False, exclude_frozen_parameters=True)
        save_tree(self._rank_state(batches), self.checkpoint_dir / partial / f"rank{self.dist.rank}_state.safetensors")
        barrier()
        if self.dist.is_main:
            for script in ("zero_to_fp32.py", "zero_to_torch.py"):  # DeepSpeed's pickle-based converters; ours need none
                (self.checkpoint_dir / script).unlink(missing_ok=True)
            final = self.checkpoint_dir / tag
            if final.exists():
                shutil.rmtree(final)
            os.replace(self.checkpoint_dir / partial, final)
            _write_atomic(self.checkpoint_dir / "latest", tag)
            self._prune_checkpoints()
        barrier()

    def _prune_checkpoints(self) -> None:
        complete = sorted(p for p in self.checkpoint_dir.glob("step_*") if not p.name.endswith(".partial"))
        for old in complete[: -self.cfg.keep_last] if self.cfg.keep_last > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
        for stray in self.checkpoint_dir.glob("step_*.partial"):
            shutil.rmtree(stray, ignore_errors=True)

    def maybe_resume(self, batches) -> bool:
        latest = self.checkpoint_dir / "latest"
        if not latest.is_file():
            return False
        tag = latest.read_text().strip()
        load_path, _ = self.engine.load_checkpoint(str(self.checkpoint_dir), tag=tag, load_module_strict=False)
        if load_path is None:
            raise DcrError(f"checkpoint {self.checkpoint_dir / tag} could not be loaded; delete it to start over")
        state_file = self.checkpoint_dir / tag / f"rank{self.dist.rank}_state.safetensors"
        if not state_file.is_file():
            raise DcrError(f"{state_file} is missing: the checkpoint was written by a run with a different number of processes; resume with the same count")
        state = load_tree(state_file)
        self.step = int(state["step"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if torch.cuda.is_available() and state["cuda_rng"].numel():
            torch.cuda.set_rng_state(state["cuda_rng"])
        batches.load_state_dict(state["data"])
        self.nonfinite_total = int(state["nonfinite_total"])
        self.nonfinite_in_row = int(state["nonfinite_in_row"])
        if self.dist.is_main:
            logger.info("resumed from %s at step %d", self.checkpoint_dir / tag, self.step)
        return True

    # ---------------------------------------------------------------- loop
    def fit(self, batches, step_fn: StepFn) -> None:
        """Train to ``max_steps``; resumes automatically; a finished run returns at once."""
        if is_finished(self.output_dir):
            if self.dist.is_main:
                print(f"{self.output_dir}: training already finished; nothing to do")
            return
        self.maybe_resume(batches)
        progress = self._progress_bar()
        data = iter(batches)
        self.engine.train()
        while self.step < self.cfg.max_steps:
            start = time.perf_counter()
            metrics: dict[str, float] = {}
            for _ in range(self.cfg.grad_accum):
                batch = next(data)
                loss, metrics = step_fn(self.engine, batch, self.generator)
                if any_true(not torch.isfinite(loss).item(), self.dist.device):
                    self._count_nonfinite()
                    continue
                self.nonfinite_in_row = 0
                self.engine.backward(loss)
                self.engine.step()
            self.step += 1
            metrics.update(lr=self.engine.get_lr()[0], step_seconds=time.perf_counter() - start, nonfinite_total=self.nonfinite_total)
            self._log(metrics)
            if progress is not None:
                progress.update(1)
                progress.set_postfix(loss=f"{metrics.get('loss', float('nan')):.4f}")
            if self.step % self.cfg.save_every == 0 or self.step == self.cfg.max_steps:
                self.save_checkpoint(batches)
        if progress is not None:
            progress.close()
        self._finish()

    def _count_nonfinite(self) -> None:
        self.nonfinite_total += 1
        self.nonfinite_in_row += 1
        if self.dist.is_main:
            logger.warning("non-finite loss at step %d skipped (%d in a row)", self.step, self.nonfinite_in_row)
        if self.nonfinite_in_row >= self.cfg.max_nonfinite:
            raise DcrError(f"{self.nonfinite_in_row} non-finite losses in a row at step {self.step}; lower the learning rate or check the data (training.max_nonfinite)")

    def _progress_bar(self):
        if not self.dist.is_main:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=self.cfg.max_steps, initial=self.step, desc=self.output_dir.name, dynamic_ncols=True)

    def _log(self, metrics: dict[str, float]) -> None:
        if not self.dist.is_main or self.step % self.cfg.log_every:
            return
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.output_dir / "logs"))
            if self.cfg.wandb_project:
                import wandb

                wandb.init(project=self.cfg.wandb_project, name=self.output_dir.name, dir=str(self.output_dir), resume="allow")
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, self.step)
        with open(self.output_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"step": self.step, **metrics}) + "\n")
        if self.cfg.wandb_project:
            import wandb

            wandb.log(metrics, step=self.step)

    def _finish(self) -> None:
        """Write the trained parameters once, after checking every rank holds the same ones."""
        state, digest = self.gathered_trainable_state()
        digests = _all_gather_strings(digest)
        if len(set(digests)) != 1:
            raise DcrError(f"ranks finished with different weights ({len(set(digests))} versions); gradients were not synchronised")
        if self.dist.is_main:
            tmp = self.output_dir / "trainable.safetensors.tmp"
            save_file(state, tmp)
            os.replace(tmp, self.output_dir / "trainable.safetensors")
            summary = {"finished": True, "step": self.step, "nonfinite_total": self.nonfinite_total,
                       "world_size": self.dist.world_size, "weights_sha256": digests[0]}
            _write_atomic(self.output_dir / "train_state.json", json.dumps(summary, indent=1))
            if self.writer is not None:
                self.writer.close()
        barrier()

    def gathered_trainable_state(self) -> tuple[dict[str, torch.Tensor], str]:
        """Full copies of the trained parameters (on rank 0 only) and their checksum (every rank).

        One parameter is gathered at a time, so no rank ever holds more than one extra tensor
        besides rank 0's copy of the result.
        """
        import deepspeed

        named = dict(self.engine.module.named_parameters())
        sha = hashlib.sha256()
        state: dict[str, torch.Tensor] = {}
        for name in self.trainable_names:
            param = named[name]
            with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
                value = param.detach().cpu()
                sha.update(name.encode())
                sha.update(value.float().numpy().tobytes())
                if self.dist.is_main:
                    state[name] = value.clone()
        return state, sha.hexdigest()


def _all_gather_strings(value: str) -> list[str]:
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [value]
    gathered: list[str] = [""] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def is_finished(stage_dir: str | Path) -> bool:
    """True once a stage's run completed (its train_state.json says so)."""
    state = Path(stage_dir) / "train_state.json"
    return state.is_file() and json.loads(state.read_text()).get("finished", False)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def load_trainable_state(module: nn.Module, path: str | Path, prefix: str = "") -> list[str]:
    """Load ``trainable.safetensors`` entries starting with ``prefix`` into ``module``."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise DcrError(f"{path} does not exist; run the stage that writes it first")
    state = {k[len(prefix):]: v for k, v in load_file(path).items() if k.startswith(prefix)}
    if not state:
        raise DcrError(f"{path} holds no parameters under '{prefix}'; it was written by another stage")
    unexpected = []
    own = dict(module.named_parameters())
    for key, value in state.items():
        if key not in own:
            unexpected.append(key)
            continue
        with torch.no_grad():
            own[key].copy_(value.to(own[key].dtype))
    if unexpected:
        raise DcrError(f"{path} has parameters this model lacks ({', '.join(unexpected[:3])}...); it belongs to another model")
    return list(state)
