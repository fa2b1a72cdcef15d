"""``stages/run_all.sh``: enhance a tower (1), train LLaVA with it (2, 3) and, as the baseline, with
the base tower, score both towers (4) and both LLaVAs (5), then print a summary.

The configs are read with ``load_config`` (defaults, validation), so what runs is what they say;
a bad config stops the run before anything starts. On one CPU process the base-tower LLaVA trains
and is scored alongside stage one and then the DCR-tower LLaVA, one thread each (``launch.ONE_THREAD``)."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from dcr_mllm.errors import DcrError
from dcr_mllm.pipeline.launch import ONE_THREAD, StepFailed, on_one_cpu, run
from dcr_mllm.pipeline.steps import Clock, eval_mllm, eval_tower, llava, training_stage

STAGES = Path("stages")
SIDE_LOG = Path("outputs/logs/llava_base.log")


@dataclass(frozen=True)
class Plan:
    """What ``run_all`` runs, decided from its arguments and the configs before anything starts."""

    enhance_config: str
    llava_config: str
    world: bool  # the tiny world: build-world first, world metrics and world questions
    world_task: str  # stage 5's task in the world
    suffix: str  # of the world's stage-5 output and summary ("_full" for --full)
    enhance_out: str
    base_tower: str
    llava_out: str
    llava_seed: int  # the LLaVA config's seed: the first of --seeds


def plan(config_dir: str | None = None, tiny: bool = False, full: bool = False) -> Plan:
    """The default is the tiny world (``stages/configs/world``, open questions); ``full``: its long
    LLaVA schedule on every kind of question; ``tiny``: the random tiny preset; ``config_dir``: a
    directory with enhance.yaml and llava.yaml."""
    from dcr_mllm.config import load_config
    from dcr_mllm.enhance.config import EnhanceConfig
    from dcr_mllm.llava.train.recipe import LlavaTrainConfig

    world = config_dir is None and not tiny
    if full and not world:
        raise DcrError("--full is the world's long LLaVA schedule; it does not combine with --tiny or --config-dir")
    if tiny and config_dir is not None:
        raise DcrError("--tiny is a config directory of its own (stages/configs/tiny): drop --config-dir or --tiny")
    directory = Path(config_dir) if config_dir is not None else STAGES / "configs" / ("tiny" if tiny else "world")
    enhance_config, llava_config = directory / "enhance.yaml", directory / ("llava_full.yaml" if full else "llava.yaml")
    for file in (enhance_config, llava_config):
        if not file.is_file():
            raise DcrError(f"{file} does not exist; a config directory needs enhance.yaml and llava.yaml")
    enhance, llava_cfg = load_config(EnhanceConfig, enhance_config), load_config(LlavaTrainConfig, llava_config)
    return Plan(
        str(enhance_config),
        str(llava_config),
        world,
        "world_local" if full else "world_local_open",
        "_full" if full else "",
        str(enhance.output_dir),
        str(enhance.tower),
        str(llava_cfg.output_dir),
        llava_cfg.seed,
    )


def run_all(p: Plan, nproc: int = 1, hostfile: str | None = None, seeds: int = 1, overwrite: bool = False) -> None:
    """The pipeline; ``seeds`` LLaVAs per tower, differing only in their seed (the config's, then
    the next ones), each scored on the same questions, so that the tower's effect is judged with
    the training run as the unit (``evaluation.analysis.seed_effect``); ``overwrite``: every
    training stage trained again (their ``--overwrite``)."""
    from dcr_mllm.evaluation.analysis.seed_effect import seeded_name

    if seeds < 1:
        raise DcrError(f"--seeds {seeds}: train at least one LLaVA per tower")
    clock = Clock()
    if p.world:
        cache = os.environ.get("DCR_MLLM_CACHE") or "~/.cache/dcr_mllm"
        clock.step(f"0/5 build the world (base models cached in {cache}/world; data in outputs/world)")
        run([sys.executable, "-m", "dcr_mllm.cli", "build-world", "--output", "outputs/world"])
    runs = {}  # model name -> (tower, output_dir, overrides)
    for k in range(seeds):
        suffix, seed = ("", []) if k == 0 else (f"_seed{k}", [f"seed={p.llava_seed + k}"])
        runs[seeded_name("dcr", k)] = (f"{p.enhance_out}/tower", f"{p.llava_out}{suffix}", seed)
        runs[seeded_name("base", k)] = (p.base_tower, f"{p.llava_out}_base{suffix}", seed)
    again = ["--overwrite"] if overwrite else []
    overrides = {
        name: [f"tower={tower}", f"output_dir={out}", *seed, *again] for name, (tower, out, seed) in runs.items()
    }
    mllm_eval = f"outputs/eval_mllm_world{p.suffix}" if p.world else "outputs/eval_mllm"
    mllm_task = p.world_task if p.world else "dcr_suite_local"
    base_names, dcr_names = [n for n in runs if n.startswith("base")], [n for n in runs if n.startswith("dcr")]
    if on_one_cpu(nproc, hostfile):
        print(
            f"(the base-tower LLaVA{'s train' if seeds > 1 else ' trains'} alongside stage one, then "
            f"{'are' if seeds > 1 else 'is'} scored; log: {SIDE_LOG})",
            flush=True,
        )
        side_steps = [
            step
            for name in base_names
            for step in (
                ["llava", "--variant", name, "--config", p.llava_config, *overrides[name]],
                ["eval-mllm", "--models", f"{name}={runs[name][1]}/model", "--tasks", mllm_task, "--output", mllm_eval],
            )
        ]
        with SideJob(side_steps) as side:
            clock.step("1/5 enhance the tower")
            training_stage("enhance", p.enhance_config, nproc, hostfile, again, env=ONE_THREAD)
            for name in dcr_names:  # on the core stage one used
                llava(name, p.llava_config, overrides[name], nproc, hostfile, clock, env=ONE_THREAD)
            side.wait()
    else:
        clock.step("1/5 enhance the tower")
        training_stage("enhance", p.enhance_config, nproc, hostfile, again)
        for name in base_names + dcr_names:
            llava(name, p.llava_config, overrides[name], nproc, hostfile, clock)

    towers = f"base={p.base_tower} dcr={p.enhance_out}/tower"
    models = " ".join(
        f"{name}={out}/model" for name, (_, out, _) in runs.items()
    )  # dcr, base, dcr_seed1, base_seed1, ...
    if p.world:
        tower_eval = "outputs/eval_tower_world"
        clock.step("4/5 score the towers (world pairs, per-attribute probes, class)")
        eval_tower(towers, tower_eval, world="outputs/world/eval")
        clock.step("5/5 score the LLaVAs (world questions, lmms-eval)")
    else:
        tower_eval = "outputs/eval_tower"
        clock.step("4/5 score the towers")
        eval_tower(towers, tower_eval)
        clock.step("5/5 score the LLaVAs")
    eval_mllm(models, mllm_task, nproc, mllm_eval)  # on one CPU the base LLaVAs' scores are the side job's, kept
    clock.step("summary")
    summary = f"outputs/summary{p.suffix}.md"
    run_args = ["--run", f"enhance={p.enhance_out}"]
    for name, (_, out, _) in runs.items():  # dcr -> llava, dcr_seed1 -> llava_seed1, base -> llava_base, ...
        run_args += [
            "--run",
            f"{'llava' + name.removeprefix('dcr') if name.startswith('dcr') else 'llava_' + name}={out}",
        ]
    run(
        [
            sys.executable,
            "-m",
            "dcr_mllm.cli",
            "summary",
            *run_args,
            "--tower-eval",
            tower_eval,
            "--mllm-eval",
            mllm_eval,
            "--output",
            summary,
        ]
    )
    print(f"(summary also in {summary}; whole pipeline: {int(clock.elapsed())} s)")


class SideJob:
    """Pipeline steps run one after another in their own one-thread process group beside the main
    line, their output in ``SIDE_LOG``; leaving the block early (a failure, Ctrl-C) stops all of it."""

    def __init__(self, steps: list[list[str]]):
        self.steps = steps
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> SideJob:
        SIDE_LOG.parent.mkdir(parents=True, exist_ok=True)
        self.log = open(SIDE_LOG, "w")
        script = " && ".join(shlex.join([sys.executable, "-m", "dcr_mllm.pipeline", *step]) for step in self.steps)
        try:
            self.process = subprocess.Popen(
                ["bash", "-c", script],
                env={**os.environ, **ONE_THREAD},
                stdout=self.log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except BaseException:
            self.log.close()
            raise
        return self

    def wait(self) -> None:
        code = self.process.wait()
        self.process = None
        if code:
            raise StepFailed(1, f"the base-tower LLaVA failed; see {SIDE_LOG}")

    def __exit__(self, *exc) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait()
        self.log.close()
