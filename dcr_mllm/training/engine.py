"""The training engine every stage uses: DeepSpeed ZeRO, seeds, checkpoints, resume, logging.

DeepSpeed is used directly (not through accelerate): one fewer layer between the loop and
ZeRO, and its checkpoint engine is pluggable, which lets checkpoints be safetensors while
DeepSpeed keeps its partition-aware save/load for ZeRO-2 and ZeRO-3.

Layout of ``output_dir``::

    checkpoints/step_000050/   DeepSpeed state (safetensors content) + rank{r}_state.safetensors
                               + trainable.safetensors with ``weights_in_checkpoints`` (that step's
                               trained parameters, gathered: what ``export-tower --step`` exports)
                               + manifest.json (every file of the checkpoint and its size)
    checkpoints/latest         name of the newest complete checkpoint
    checkpoints/config.json    the settings that shape training, as the checkpoints were made with
    trainable.safetensors      the trained parameters, gathered, written at the end
    train_state.json           {"finished": true, "step": N, "weights_sha256": ...} once complete
    metrics.jsonl, logs/       scalars (and TensorBoard events)

A checkpoint is written under a ``.partial`` name and renamed when every rank has written its
part, then ``latest`` is replaced atomically: a kill at any moment leaves the previous
checkpoint intact. Restarting with the same ``output_dir`` resumes from the newest checkpoint
whose files are all there and whole (a disk that filled up or a copy that was cut short can
still leave a broken one), and only with the settings it was made with, unless
``allow_config_change``. A finished run whose ``max_steps`` is raised continues.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from dcr_mllm.errors import DcrError, WriteError
from dcr_mllm.io import atomic_path, write_atomic, writing
from dcr_mllm.training.checkpoints import (
    TRAINABLE,
    TRAINING_KEYS,
    intact_checkpoint,
    is_finished,
    load_rank_state,
    plain,
    prune_checkpoints,
    publish_checkpoint,
    settings_changed,
    truncate_jsonl,
)
from dcr_mllm.training.config import TrainConfig
from dcr_mllm.training.distributed import DistInfo, all_gather_strings, any_true, barrier, rank_seed
from dcr_mllm.training.ds_config import deepspeed_config
from dcr_mllm.training.log import logger
from dcr_mllm.training.optim import build_optimizer, lr_lambda, param_groups
from dcr_mllm.training.preemption import Preempted, agreed_signal, catch_preemption
from dcr_mllm.training.safe_state import safetensors_checkpoint_engine, save_tree
from dcr_mllm.training.zero import fp32_master, save_dtype, unlinked_masters

StepFn = Callable[[nn.Module, dict, torch.Generator], tuple[torch.Tensor, dict[str, float]]]
#: called on every rank after each optimizer step (and once at step 0 of a fresh run): extra scalars to log
AfterStep = Callable[["Trainer", int], dict[str, float]]


class Trainer:
    """Runs ``step_fn`` over batches for ``cfg.max_steps`` optimizer steps, resumably."""

    def __init__(
        self,
        model: nn.Module,
        cfg: TrainConfig,
        output_dir: str | Path,
        seed: int,
        dist_info: DistInfo,
        run_config: dict | None = None,
        allow_config_change: bool = False,
        weights_in_checkpoints: bool = False,
    ):
        """``run_config``: the recipe's settings that shape this stage (model, objective, data);
        with the stage's training settings, world size and seed, a resume must match them
        unless ``allow_config_change``. ``weights_in_checkpoints``: every checkpoint also holds
        its step's trained parameters, gathered (small ones only: LoRA, a projector)."""
        import deepspeed

        self.cfg, self.dist, self.output_dir = cfg, dist_info, Path(output_dir)
        self.allow_config_change = allow_config_change
        self.weights_in_checkpoints = weights_in_checkpoints
        self.fingerprint = plain(
            {
                "world_size": dist_info.world_size,
                "seed": seed,
                **{key: getattr(cfg, key) for key in TRAINING_KEYS},
                **(run_config or {}),
            }
        )
        self.checkpoint_dir = self.output_dir / "checkpoints"
        self.trainable_names = [name for name, p in model.named_parameters() if p.requires_grad]
        if not self.trainable_names:
            raise DcrError("nothing to train: every parameter is frozen; check the stage settings")
        self.save_dtypes = {name: save_dtype(p) for name, p in model.named_parameters() if p.requires_grad}
        optimizer = build_optimizer(model, cfg)
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
        self.resumed_step = None
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
        """Write ``step_N.partial`` on every rank, then (rank 0) its manifest, rename it and point
        ``latest`` at it. A write fault (full disk, quota, read-only) removes the partial folder
        and ends the run in one line; the previous checkpoint stays what a rerun resumes from."""
        tag = f"step_{self.step:06d}"
        try:
            with writing(self.checkpoint_dir / tag):
                self._write_checkpoint(tag, batches)
        except WriteError:
            shutil.rmtree(self.checkpoint_dir / f"{tag}.partial", ignore_errors=True)
            raise

    def _write_checkpoint(self, tag: str, batches) -> None:
        partial = f"{tag}.partial"
        self.engine.save_checkpoint(
            str(self.checkpoint_dir), tag=partial, save_latest=False, exclude_frozen_parameters=True
        )
        save_tree(self._rank_state(batches), self.checkpoint_dir / partial / f"rank{self.dist.rank}_state.safetensors")
        if self.weights_in_checkpoints:  # collective; readable without DeepSpeed or the other ranks' shards
            trained, _ = self.gathered_trainable_state()
            if self.dist.is_main:
                save_file(trained, self.checkpoint_dir / partial / TRAINABLE)
        barrier()
        if self.dist.is_main:
            publish_checkpoint(self.checkpoint_dir, tag)
            prune_checkpoints(self.checkpoint_dir, self.cfg.keep_last)
        barrier()

    def maybe_resume(self, batches) -> bool:
        """Load the newest intact checkpoint (``intact_checkpoint``) made with these settings
        (``_check_config``), if any; False for a fresh start."""
        tag = intact_checkpoint(self.checkpoint_dir, self.dist.world_size, self.dist.is_main)
        if tag is None:
            return False
        self._check_config()
        load_path, _ = self.engine.load_checkpoint(str(self.checkpoint_dir), tag=tag, load_module_strict=False)
        if load_path is None:
            raise DcrError(
                f"checkpoint {self.checkpoint_dir / tag} could not be loaded; delete {self.checkpoint_dir} to start over"
            )
        state = load_rank_state(self.checkpoint_dir / tag, self.dist.rank)
        self.step = int(state["step"])
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if torch.cuda.is_available() and state["cuda_rng"].numel():
            torch.cuda.set_rng_state(state["cuda_rng"])
        batches.load_state_dict(state["data"])
        self.nonfinite_total = int(state["nonfinite_total"])
        self.nonfinite_in_row = int(state["nonfinite_in_row"])
        self._apply_schedule()
        self.resumed_step = self.step
        if self.dist.is_main:
            truncate_jsonl(self.output_dir / "metrics.jsonl", self.step)
            logger.info("resumed from %s at step %d", self.checkpoint_dir / tag, self.step)
        return True

    def _check_config(self) -> None:
        """Refuse to resume with settings that change training, unless allowed; then record them."""
        if settings_changed(
            self.checkpoint_dir, self.output_dir, self.fingerprint, self.allow_config_change, self.dist.is_main
        ):
            self._store_config()

    def _store_config(self) -> None:
        if self.dist.is_main:
            self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
            write_atomic(self.checkpoint_dir / "config.json", json.dumps(self.fingerprint, indent=1))
        barrier()

    def _apply_schedule(self) -> None:
        """Put this run's learning rates, betas and weight decay over the loaded optimizer state and
        recompute the scheduler's rate for the current step, so a changed schedule takes effect (the
        loaded state holds the old values); with unchanged settings this rewrites the same values."""
        scheduler = self.engine.lr_scheduler
        groups = self.engine.optimizer.param_groups
        base_lrs = [group["lr"] for group in param_groups(self.engine.module, self.cfg)]
        scheduler.base_lrs = base_lrs
        factor = lr_lambda(self.cfg)(scheduler.last_epoch)
        for group, base in zip(groups, base_lrs, strict=True):
            group.update(
                initial_lr=base,
                lr=base * factor,
                betas=tuple(self.cfg.betas),
                eps=self.cfg.adam_eps,
                weight_decay=self.cfg.weight_decay,
            )
        # LambdaLR reports the rate it last set; its public state carries that too
        scheduler.load_state_dict({**scheduler.state_dict(), "_last_lr": [group["lr"] for group in groups]})

    # ---------------------------------------------------------------- loop
    def fit(self, batches, step_fn: StepFn, after_step: AfterStep | None = None) -> None:
        """Train to ``max_steps``; resumes automatically; a finished run returns at once, unless
        ``max_steps`` was raised: then it continues from its last checkpoint. ``after_step``'s
        scalars join the step's logged metrics (the tower's evaluation during training)."""
        if is_finished(self.output_dir, self.cfg.max_steps):
            if self.dist.is_main:
                logger.info(f"{self.output_dir}: training already finished; nothing to do")
            return
        if not self.maybe_resume(batches):
            if is_finished(self.output_dir):
                raise DcrError(
                    f"{self.output_dir} finished at a lower max_steps and its checkpoints are gone, so it cannot "
                    f"continue to {self.cfg.max_steps}; restore max_steps, or delete {self.output_dir} to train the stage again"
                )
            self._store_config()
        if self.dist.is_main and is_finished(self.output_dir):
            logger.info(
                f"{self.output_dir}: continuing the finished run from step {self.step} to max_steps {self.cfg.max_steps}"
            )
            (self.output_dir / "train_state.json").unlink()
        barrier()
        progress = self._progress_bar()
        data = iter(batches)
        self.engine.train()
        saved = self.step  # a resumed step has its checkpoint
        if after_step is not None and self.step == 0:
            after_step(self, 0)
        with catch_preemption(), contextlib.closing(progress) if progress is not None else contextlib.nullcontext():
            while self.step < self.cfg.max_steps:
                signum = agreed_signal(self.dist.device)
                if signum:
                    self._stop_for(signum, batches, saved)
                start = time.perf_counter()
                metrics = self._optimizer_step(data, step_fn)
                self.step += 1
                metrics.update(
                    lr=self.engine.get_lr()[0],
                    step_seconds=time.perf_counter() - start,
                    nonfinite_total=self.nonfinite_total,
                )
                if after_step is not None:
                    metrics.update(after_step(self, self.step))
                self._log(metrics)
                if progress is not None:
                    progress.update(1)
                    progress.set_postfix(loss=f"{metrics.get('loss', float('nan')):.4f}")
                if self.step % self.cfg.save_every == 0 or self.step == self.cfg.max_steps:
                    self.save_checkpoint(batches)
                    saved = self.step
        self._finish()

    def _stop_for(self, signum: int, batches, saved: int) -> None:
        """Preempted: every rank saves the step just finished (unless it is saved already, or no step
        has run) and exits."""
        if saved != self.step:
            self.save_checkpoint(batches)
        if self.writer is not None:
            self.writer.close()
        if self.dist.is_main:
            logger.info(
                f"{self.output_dir}: {signal.Signals(signum).name} received; checkpoint at step {self.step} saved, exiting with "
                f"{128 + signum}; run the same command again to resume"
            )
        raise Preempted(signum)

    def _optimizer_step(self, data, step_fn: StepFn) -> dict[str, float]:
        """Exactly one DeepSpeed optimizer step over ``grad_accum`` finite micro-batches; returns
        the mean of their metrics.

        DeepSpeed counts micro-batches to find the accumulation boundary, so a micro-batch with a
        non-finite loss cannot simply be left out: it is replaced by the next batch (and counted,
        so ``max_nonfinite`` in a row still aborts). Every rank replaces it together.
        """
        collected: list[dict[str, float]] = []
        while len(collected) < self.cfg.grad_accum:
            loss, metrics = step_fn(self.engine, next(data), self.generator)
            if any_true(not torch.isfinite(loss).item(), self.dist.device):
                self._count_nonfinite()
                continue
            self.nonfinite_in_row = 0
            self.engine.backward(loss)
            self.engine.step()
            collected.append(metrics)
        return {key: sum(m[key] for m in collected) / len(collected) for key in collected[0]}

    def _count_nonfinite(self) -> None:
        self.nonfinite_total += 1
        self.nonfinite_in_row += 1
        if self.dist.is_main:
            logger.warning(
                "non-finite loss at step %d: micro-batch replaced by the next (%d in a row)",
                self.step,
                self.nonfinite_in_row,
            )
        if self.nonfinite_in_row >= self.cfg.max_nonfinite:
            raise DcrError(
                f"{self.nonfinite_in_row} non-finite losses in a row at step {self.step}; lower the learning rate or check the data (training.max_nonfinite)"
            )

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

            self.writer = SummaryWriter(
                str(self.output_dir / "logs"), purge_step=None if self.resumed_step is None else self.resumed_step + 1
            )
            if self.cfg.wandb_project:
                import wandb

                wandb.init(
                    project=self.cfg.wandb_project, name=self.output_dir.name, dir=str(self.output_dir), resume="allow"
                )
        with writing(self.output_dir / "metrics.jsonl"):  # a line cut short by a full disk is dropped on resume
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
        digests = all_gather_strings(digest)
        if len(set(digests)) != 1:
            raise DcrError(
                f"ranks finished with different weights ({len(set(digests))} versions); gradients were not synchronised"
            )
        if self.dist.is_main:
            with atomic_path(self.output_dir / TRAINABLE) as tmp:
                save_file(state, tmp)
            summary = {
                "finished": True,
                "step": self.step,
                "nonfinite_total": self.nonfinite_total,
                "world_size": self.dist.world_size,
                "weights_sha256": digests[0],
            }
            write_atomic(self.output_dir / "train_state.json", json.dumps(summary, indent=1))
            if self.writer is not None:
                self.writer.close()
        barrier()

    def gathered_trainable_state(self) -> tuple[dict[str, torch.Tensor], str]:
        """Full copies of the trained parameters (on rank 0 only) and their checksum (every rank).

        The values are the optimizer's fp32 masters, cast to each parameter's dtype before
        DeepSpeed (``save_dtypes``): under bf16 the module holds bf16-rounded copies, which are
        not what was trained. One parameter is gathered at a time, so no rank ever holds more
        than one extra tensor besides rank 0's copy of the result.
        """
        named = dict(self.engine.module.named_parameters())
        unlinked = unlinked_masters(self.engine.optimizer)
        sha = hashlib.sha256()
        state: dict[str, torch.Tensor] = {}
        for name in self.trainable_names:
            value = fp32_master(named[name], unlinked).to(self.save_dtypes[name])
            sha.update(name.encode())
            sha.update(value.float().numpy().tobytes())
            if self.dist.is_main:
                state[name] = value
        return state, sha.hexdigest()
