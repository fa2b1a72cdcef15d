"""Watch the tower while the LoRA stage trains: evaluate it every ``eval.every`` steps, at step 0
(``eval.at_start``) and at the last step, the one exported.

The current tower is the base tower with the trained parameters' fp32 masters (gathered from
every rank, ZeRO-3 included) and its LoRA merged, built on the main rank in memory, never written;
the other ranks wait. Evaluation runs under ``torch.no_grad`` inside a forked random state seeded
on its own, so the training's random streams, and therefore its weights, are exactly those of a
run without evaluation, and the same step always scores the same.

Results go to ``STAGE_DIR/eval.jsonl`` (one row per evaluated step, step 0 being the base tower),
into that step's row of ``metrics.jsonl`` and TensorBoard as ``eval/<benchmark>/<metric>``, and,
at the end, to ``STAGE_DIR/eval.png`` and a printed table.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from dcr_mllm.enhance.config import EnhanceConfig
from dcr_mllm.enhance.merge import merged_tower
from dcr_mllm.errors import DcrError
from dcr_mllm.io import atomic_path
from dcr_mllm.normalization import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from dcr_mllm.training.checkpoints import truncate_jsonl
from dcr_mllm.training.distributed import any_true, barrier

EVAL_FILE = "eval.jsonl"
SELECTED = "selected.safetensors"  # the trained parameters of the best evaluated step by eval.select
#: the metrics each benchmark's curve panel shows (the rest are in eval.jsonl)
HEADLINE = {
    "world": (
        "probe_global/claim_mean",
        "probe_layer/claim_mean",
        "probe_global/fine_mean",
        "probe_layer/fine_mean",
        "pairs/mean",
        "class/zero_shot",
        "class/probe",
    ),
    "mmvp-vlm": ("average",),
    "classification": ("zero_shot_top1", "linear_probe_top1"),
}


class TowerWatch:
    """``watch(trainer, step)`` on every rank after each optimizer step (and at step 0): returns
    this step's ``eval/...`` scalars on the main rank when the step is due, else {}."""

    def __init__(self, cfg: EnhanceConfig, stage_dir: Path, is_main: bool):
        self.cfg, self.file, self.is_main = cfg, Path(stage_dir) / EVAL_FILE, is_main
        self.scorers = None
        self.reference = None  # the full base tower (text side included) the evaluated weights go into
        self.started = False

    def due(self, step: int, last: int) -> bool:
        """Every ``eval.every`` steps, step 0 with ``at_start``, and the last step (the exported one)."""
        every = self.cfg.eval.every
        return bool(every) and (step % every == 0 or step == last if step else self.cfg.eval.at_start)

    def __call__(self, trainer, step: int) -> dict[str, float]:
        if not self.started:  # rows a killed run wrote after its checkpoint are evaluated again
            self.started = True
            if self.is_main and trainer.resumed_step is not None:
                truncate_jsonl(self.file, trainer.resumed_step)
            elif self.is_main:  # a fresh run: nothing of an earlier, failed one counts
                self.file.unlink(missing_ok=True)
                self.file.with_name(SELECTED).unlink(missing_ok=True)
        if not self.due(step, trainer.cfg.max_steps):
            return {}
        state, _ = trainer.gathered_trainable_state()  # collective: every rank takes part
        scores = {}
        if self.is_main:
            devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
            with torch.random.fork_rng(devices=devices), torch.no_grad():
                torch.manual_seed(0)
                tower = self._tower(state)
                for bench, score in self._scorers():
                    scores.update({f"eval/{bench.name}/{key}": value for key, value in score(tower).scores.items()})
        key = f"eval/{self.cfg.eval.select}"
        if self.cfg.eval.select and any_true(self.is_main and key not in scores, trainer.dist.device):
            known = ", ".join(k.removeprefix("eval/") for k in scores)
            raise DcrError(
                f"eval.select={self.cfg.eval.select} is not a metric the benchmarks report ({known}); fix eval.select"
            )
        if self.is_main:
            with open(self.file, "a") as f:
                f.write(json.dumps({"step": step, **scores}) + "\n")
            if self.cfg.eval.select and selected(self.cfg, self.file)["step"] == step:
                with atomic_path(self.file.with_name(SELECTED)) as tmp:
                    save_file(state, tmp, metadata={"step": str(step)})
        barrier()
        return scores

    def _scorers(self):
        from dcr_mllm.evaluation.tower.run import benchmark_scorer

        if self.scorers is None:
            self.scorers = [
                (bench, benchmark_scorer(bench.name, bench.data, pairs_per_attribute=bench.pairs_per_attribute))
                for bench in self.cfg.eval.benchmarks
            ]
        return self.scorers

    def _tower(self, state: dict[str, torch.Tensor]):
        """The base tower (text side included) with the trained vision weights merged in."""
        cfg = self.cfg
        loaded = self.reference is not None  # loaded once: every evaluation overwrites all of its vision parts
        tower, _ = merged_tower(cfg, state, into=self.reference)
        if not loaded:
            if cfg.data.normalization == "openai_clip":
                tower.use_normalization(OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
            self.reference = tower.to("cuda" if torch.cuda.is_available() else "cpu").eval()
        return self.reference

    def finish(self) -> None:
        """The chart and the table of every evaluated step (main rank)."""
        if not self.is_main or not self.file.is_file():
            return
        rows = [json.loads(line) for line in self.file.read_text().splitlines()]
        if not rows:
            return
        chart(rows, self.file.with_name("eval.png"))
        print("\n".join(table(rows)))


def headline(rows: list[dict]) -> list[str]:
    keys = [key for key in rows[0] if key != "step"]
    wanted = [f"eval/{bench}/{metric}" for bench, metrics in HEADLINE.items() for metric in metrics]
    return [key for key in wanted if key in keys] or keys[:6]


def table(rows: list[dict]) -> list[str]:
    keys = headline(rows)
    lines = ["| step | " + " | ".join(k.removeprefix("eval/") for k in keys) + " |", "|---:" * (len(keys) + 1) + "|"]
    lines += ["| " + " | ".join([str(row["step"]), *(f"{row[k]:.1f}" for k in keys)]) + " |" for row in rows]
    return lines


def chart(rows: list[dict], path: Path) -> None:
    """One panel per headline metric over the evaluated steps; the first evaluated step (the base
    tower, with ``at_start``) as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = headline(rows)
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3), squeeze=False)
    steps = [row["step"] for row in rows]
    for ax, key in zip(axes[0], keys):
        ax.plot(steps, [row[key] for row in rows], marker="o")
        if rows[0]["step"] == 0:
            ax.axhline(rows[0][key], linestyle="--", color="gray", label="base (step 0)")
            ax.legend(fontsize=7)
        ax.set_title(key.removeprefix("eval/"), fontsize=8)
        ax.set_xlabel("LoRA step")
    axes[0][0].set_ylabel("percent")
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".partial.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)


def selected(cfg: EnhanceConfig, eval_file: Path) -> dict:
    """The evaluated step where ``eval.select`` is highest (the earliest of ties), its value and
    every evaluated step's value."""
    key = f"eval/{cfg.eval.select}"
    values = {row["step"]: row[key] for row in (json.loads(line) for line in Path(eval_file).read_text().splitlines())}
    best = max(values, key=lambda step: (values[step], -step))
    return {"step": best, "value": values[best], "metric": cfg.eval.select, "values": values}
