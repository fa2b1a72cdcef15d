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
from dcr_mllm.pipeline.steps import Clock, eval_mllm, eval_tower, llava, mllm_data_root, training_stage

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
    tasks: str = "dcr_suite_local"  # stage 5's lmms-eval tasks (the world's task in the world)
    tower_data: str | None = None  # stage 4's MMVP-VLM directory (None: synthetic stand-ins)
    probe_data: str | None = None  # stage 4's classification image folder (None: synthetic shapes)


def plan(
    config_dir: str | None = None,
    tiny: bool = False,
    full: bool = False,
    tasks: str | None = None,
    tower_data: str | None = None,
    probe_data: str | None = None,
    synthetic_eval: bool = False,
) -> Plan:
    """The default is the tiny world (``stages/configs/world``, open questions); ``full``: its long
    LLaVA schedule on every kind of question; ``tiny``: the random tiny preset; ``config_dir``: a
    directory with enhance.yaml and llava.yaml. A real tower is scored on real data (``tower_data``
    and ``tasks``), or on synthetic stand-ins only when ``synthetic_eval`` says so.

    Args:
        config_dir: the config directory, as above; None: the world or ``tiny``.
        tiny: the random tiny preset (``stages/configs/tiny``).
        full: the world's long LLaVA schedule.
        tasks: stage 5's lmms-eval tasks; None: ``dcr_suite_local`` (the world's own task in the world).
        tower_data: stage 4's MMVP-VLM directory; None: a synthetic one.
        probe_data: stage 4's classification image folder; None: synthetic shapes.
        synthetic_eval: score a real tower on synthetic stand-ins instead of refusing.
    """
    from dcr_mllm.config import load_config
    from dcr_mllm.enhance.config import EnhanceConfig
    from dcr_mllm.llava.train.recipe import LlavaTrainConfig

    world = config_dir is None and not tiny
    if full and not world:
        raise DcrError("--full is the world's long LLaVA schedule; it does not combine with --tiny or --config-dir")
    if tiny and config_dir is not None:
        raise DcrError("--tiny is a config directory of its own (stages/configs/tiny): drop --config-dir or --tiny")
    given = [
        flag
        for flag, value in (("--tasks", tasks), ("--tower-eval-data", tower_data), ("--probe-data", probe_data))
        if value
    ]
    if world and given:
        raise DcrError(f"the world scores its own sets: drop {given[0]}, or pass --config-dir or --tiny")
    for flag, folder in (("--tower-eval-data", tower_data), ("--probe-data", probe_data)):
        if folder and not Path(folder).is_dir():
            raise DcrError(f"{flag} {folder} is not a directory: check the path")
    directory = Path(config_dir) if config_dir is not None else STAGES / "configs" / ("tiny" if tiny else "world")
    enhance_config, llava_config = directory / "enhance.yaml", directory / ("llava_full.yaml" if full else "llava.yaml")
    for file in (enhance_config, llava_config):
        if not file.is_file():
            raise DcrError(f"{file} does not exist; a config directory needs enhance.yaml and llava.yaml")
    enhance, llava_cfg = load_config(EnhanceConfig, enhance_config), load_config(LlavaTrainConfig, llava_config)
    world_task = "world_local" if full else "world_local_open"
    tasks = world_task if world else tasks or "dcr_suite_local"
    if tower_data:
        from dcr_mllm.evaluation.tower.mmvp_vlm import read_benchmark

        read_benchmark(tower_data)  # checked now, not after training
    if real_tower(str(enhance.tower)) and not synthetic_eval:
        refuse_stand_ins(str(enhance.tower), tasks, tower_data)
    return Plan(
        str(enhance_config),
        str(llava_config),
        world,
        world_task,
        "_full" if full else "",
        str(enhance.output_dir),
        str(enhance.tower),
        str(llava_cfg.output_dir),
        llava_cfg.seed,
        tasks,
        tower_data,
        probe_data,
    )


def real_tower(tower: str) -> bool:
    """Whether a base tower is a real one: anything but a tiny or world preset, or a directory in
    their caches (synthetic worlds, evaluated on synthetic data by design)."""
    from dcr_mllm.presets.real import TINY_NAMES, WORLD_NAMES
    from dcr_mllm.presets.tiny import default_tiny_root
    from dcr_mllm.world.models import default_world_root

    if tower in TINY_NAMES or tower in WORLD_NAMES:
        return False
    path = Path(tower).expanduser().resolve()
    return not any(
        path.is_relative_to(root.expanduser().resolve()) for root in (default_tiny_root(), default_world_root())
    )


def refuse_stand_ins(tower: str, tasks: str, tower_data: str | None) -> None:
    """One line naming what would be scored on synthetic stand-ins, and the flags that avoid it."""
    from dcr_mllm.evaluation.freshness import generator
    from dcr_mllm.evaluation.mllm.run import stand_in_folders

    stand_ins = []
    if not tower_data or generator(tower_data):
        stand_ins.append("the tower on a synthetic MMVP-VLM (pass --tower-eval-data MMVP_VLM_DIR)")
    folders = stand_in_folders(mllm_data_root(), [t.strip() for t in tasks.split(",") if t.strip()])
    if folders:
        stand_ins.append(
            f"the LLaVAs on synthetic {', '.join(folders)} for --tasks {tasks} (pass --tasks dcr_suite for the hub's "
            f"data, or prepare the local sets in {mllm_data_root()} with `dcr-mllm prepare-eval-data`)"
        )
    if stand_ins:
        raise DcrError(
            f"{tower} is a real tower, but run_all would score {' and '.join(stand_ins)}; "
            "or pass --synthetic-eval to score it on synthetic stand-ins"
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
    mllm_task = p.tasks
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
        eval_tower(towers, tower_eval, p.tower_data, p.probe_data)
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
    line, their output in ``log``; leaving the block early (a failure, Ctrl-C) stops all of it."""

    def __init__(self, steps: list[list[str]], log: Path = SIDE_LOG):
        self.steps = steps
        self.log_path = log
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> SideJob:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log = open(self.log_path, "w")
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
            raise StepFailed(1, f"a step beside the main line failed; see {self.log_path}")

    def __exit__(self, *exc) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait()
        self.log.close()
