"""Score LLaVA models on lmms-eval tasks, each only when something it depends on changed, then
compare them: ``dcr-mllm eval-mllm`` (stage 5 calls it).

A model is ``NAME=DIR`` (a llava-hf directory: lmms-eval's ``llava_hf``) or ``NAME=DIR+TOWER``
(``dcr_llava``: the tower swapped in memory). The local tasks' data (``$DCR_EVAL_DATA``) is written
where it is missing, or where it was generated from other settings; data a user prepared from the
real benchmarks is kept. A model's results are reused when the model, the tower, the tasks and
their data are what they were made from (``freshness``). lmms-eval logs every answer
(``--log_samples``), so the world's report also holds each accuracy's 95 % interval and a paired
test of each difference (``report/world_significance.json``, ``significance.compare_world``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from dcr_mllm.errors import DcrError
from dcr_mllm.evaluation import freshness
from dcr_mllm.evaluation.analysis.significance import compare_world, world_samples
from dcr_mllm.evaluation.mllm.eval_data import (
    SYNTHETIC_SETS,
    eval_data_root,
    prepare_eval_data,
    synthetic_recipe,
    task_dir,
    world_recipe,
)
from dcr_mllm.evaluation.mllm.report import compare_runs
from dcr_mllm.evaluation.mllm.world_task import WORLD_TASKS
from dcr_mllm.io import generated_from, write_atomic
from dcr_mllm.training.distributed import child_environment

#: world_local: every attribute asked in every kind about each of 600 images (world_local_open: the
#: open ones), so that a 5-point difference between two models on one attribute and kind is about
#: two standard errors
WORLD_TASK_IMAGES = 600
#: the local tasks (and groups) and the data folder under $DCR_EVAL_DATA each reads
LOCAL_TASKS = {
    "mmvp_local": ("mmvp",),
    "pope_local_adv": ("pope",),
    "pope_local_pop": ("pope",),
    "pope_local_random": ("pope",),
    "dcr_suite_local": ("mmvp", "pope"),
    "world_local": ("world",),
    "world_local_open": ("world",),
    "cv_bench_local": ("cv_bench",),
    "countbenchqa_local": ("countbenchqa",),
    "dcr_suite_perception_local": ("cv_bench", "countbenchqa"),
}


def parse_models(specs: list[str]) -> dict[str, tuple[Path, Path | None]]:
    """``NAME=DIR`` or ``NAME=DIR+TOWER`` -> {name: (checkpoint, tower or None)}, each checked to exist."""
    models = {}
    for spec in specs:
        name, sep, target = spec.partition("=")
        if not sep or not name or not target:
            raise DcrError(f"--model {spec!r}: give NAME=DIR or NAME=DIR+TOWER")
        checkpoint, _, tower = target.partition("+")
        for path, what in ((checkpoint, "model"), (tower, "tower")):
            if path and not Path(path).is_dir():
                raise DcrError(
                    f"{what} {path} does not exist: run stages 2-3 first (run_all.sh trains both tiny models), or pass --model"
                )
        if name in models:
            raise DcrError(f"two models are named {name!r}; give each its own NAME")
        models[name] = (Path(checkpoint), Path(tower) if tower else None)
    if not models:
        raise DcrError("no model to score: pass --model NAME=DIR at least once")
    return models


def local_folders(tasks: list[str]) -> set[str]:
    """The data folders the requested tasks read (exact task and group names)."""
    return {folder for task in tasks for folder in LOCAL_TASKS.get(task, ())}


def ensure_local_data(root: Path, folders: set[str]) -> None:
    """Write each needed folder that is missing or was generated from other settings; keep real data."""
    world = "world" in folders and generated_from(root / "world") != world_recipe(WORLD_TASK_IMAGES)
    synthetic = set()
    for name in folders & set(SYNTHETIC_SETS):
        record = generated_from(root / name)
        real = record is not None and "source" in record
        if not real and record != synthetic_recipe(name):
            synthetic.add(name)
    if synthetic:
        print(
            f"writing synthetic stand-ins for {', '.join(sorted(synthetic))} under {root}: no real data there; "
            "their scores are not the benchmarks' (`dcr-mllm prepare-eval-data --mmvp DIR --pope DIR --coco DIR` "
            "writes MMVP and POPE from their original files)",
            flush=True,
        )
    if world or synthetic:
        prepare_eval_data(root, synthetic=synthetic, world=WORLD_TASK_IMAGES if world else 0)


def stand_in_folders(root: Path, tasks: list[str]) -> list[str]:
    """The local data folders the tasks read that hold no real data (missing, or generated), which
    ``ensure_local_data`` fills with synthetic stand-ins."""
    records = {name: generated_from(root / name) for name in sorted(local_folders(tasks))}
    return [name for name, record in records.items() if not (isinstance(record, dict) and "source" in record)]


def synthetic_folders(root: Path, folders: set[str]) -> dict[str, str]:
    """``{folder: generator}`` of the local data folders that hold generated data (``generated.json``
    names a generator), whose scores are therefore not the benchmarks'."""
    return {name: made for name in sorted(folders) if (made := freshness.generator(root / name))}


def hub_environment(tasks: list[str], offline: bool) -> dict[str, str]:
    """Hugging Face's offline switches for lmms-eval: set when asked (``--offline``), when this
    environment already sets ``HF_HUB_OFFLINE``, or when every task reads local data (so that those
    run with no network); otherwise none, and hub tasks (``dcr_suite``) fetch what is not cached."""
    inherited = os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}
    if offline or inherited or all(task in LOCAL_TASKS for task in tasks):
        return {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return {}


def evaluate_mllms(specs: list[str], tasks: str, output: str | Path, nproc: int = 1, offline: bool = False) -> Path:
    """Score every model (or reuse its current results), then write ``output/report``; returns it.
    The report says where its local data is synthetic (``report.md``'s first line, ``data_sources.json``).

    Args:
        specs: the models, each ``NAME=DIR`` (a LLaVA checkpoint) or ``NAME=DIR+TOWER`` (its tower swapped in).
        tasks: lmms-eval tasks or groups, comma-separated (e.g. ``dcr_suite_local``).
        output: the directory of results, one subdirectory per model, plus ``logs/`` and ``report/``.
        nproc: processes per model (``accelerate launch`` when more than 1).
        offline: keep lmms-eval off the hub (``hub_environment``).
    """
    models = parse_models(specs)
    task_names = [t.strip() for t in tasks.split(",") if t.strip()]
    if not task_names:
        raise DcrError("--tasks is empty; name lmms-eval tasks or groups, e.g. dcr_suite_local")
    if nproc < 1:
        raise DcrError(f"--nproc {nproc}: must be at least 1")
    if len([t for t in task_names if t in WORLD_TASKS]) > 1:
        raise DcrError(
            "--tasks names world_local and world_local_open: score one of them (world_local holds the open questions too)"
        )
    output = Path(output)
    root = eval_data_root()
    folders = local_folders(task_names)
    ensure_local_data(root, folders)
    import torch

    cuda = torch.cuda.is_available()
    device_args = "device=cuda" if cuda else "device=cpu,device_map=cpu"
    stale = {}
    for name, (checkpoint, tower) in models.items():
        model = "dcr_llava" if tower else "llava_hf"
        model_args = f"pretrained={checkpoint}" + (f",vision_tower={tower}" if tower else "") + f",{device_args}"
        record = freshness.made_from(
            {"model": model, "model_args": model_args, "tasks": task_names, "log_samples": True},
            {
                "model": checkpoint,
                "tower": tower,
                "tasks": task_dir(),
                **{f"data/{f}": root / f for f in sorted(folders)},
            },
        )
        if freshness.is_current(output / name, record):
            print(f"{name}: up to date in {output / name}")
        else:
            stale[name] = (model, model_args, record)
    _run_lmms_eval(
        {name: (model, model_args) for name, (model, model_args, _) in stale.items()},
        task_names,
        output,
        nproc,
        _side_by_side(cuda, nproc, len(stale)),
        hub_environment(task_names, offline),
    )
    for name, (_, _, record) in stale.items():
        freshness.mark_current(output / name, record)
        print(f"{name}: {output / name}")
    runs = [f"{name}={output / name}" for name in models]
    made_up = synthetic_folders(root, folders)
    compare_runs(runs, output / "report", freshness.synthetic_note(made_up))
    write_atomic(
        output / "report" / "data_sources.json", json.dumps({"root": str(root), "synthetic": made_up}, indent=1)
    )
    world_task = next((t for t in task_names if t in WORLD_TASKS), None)
    if world_task:  # every accuracy with its interval, every difference with a paired test
        comparison = compare_world({name: world_samples(output / name, world_task) for name in models})
        write_atomic(output / "report" / "world_significance.json", json.dumps(comparison, indent=1))
    return output / "report"


def _side_by_side(cuda: bool, nproc: int, models: int) -> int:
    """How many models to score at once: lmms-eval generates one question at a time; on a CPU a
    small model's step is bound by Python overhead, not arithmetic, so one-process CPU runs score
    as many models side by side as there are cores, one thread each; otherwise one at a time."""
    return min(os.cpu_count() or 1, models) if not cuda and nproc == 1 and models > 1 else 1


def _run_lmms_eval(
    models: dict[str, tuple[str, str]],
    tasks: list[str],
    output: Path,
    nproc: int,
    side_by_side: int,
    hub: dict[str, str],
) -> None:
    """Score each ``name: (model, model_args)`` into ``output/name`` (log: ``output/logs/name.log``),
    ``side_by_side`` at a time (one thread each when more than one); ``hub``: the offline switches."""
    launcher = [sys.executable, "-m", "lmms_eval"]
    if nproc > 1:
        launcher = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--num_processes",
            str(nproc),
            "-m",
            "lmms_eval",
        ]
    env = {**child_environment(), **hub, "DCR_EVAL_DATA": str(eval_data_root())}
    if side_by_side > 1:
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    queue = list(models)
    while queue:
        batch, queue = queue[:side_by_side], queue[side_by_side:]
        running = {}
        for name in batch:
            model, model_args = models[name]
            out, log = output / name, output / "logs" / f"{name}.log"
            shutil.rmtree(out, ignore_errors=True)
            log.parent.mkdir(parents=True, exist_ok=True)
            command = [
                *launcher,
                "eval",
                "--model",
                model,
                "--model_args",
                model_args,
                "--tasks",
                ",".join(tasks),
                "--include_path",
                str(task_dir()),
                "--batch_size",
                "1",
                "--output_path",
                str(out),
                "--log_samples",
            ]
            stream = open(log, "w")  # noqa: SIM115 - open while the process runs; _wait closes it
            running[name] = (subprocess.Popen(command, env=env, stdout=stream, stderr=subprocess.STDOUT), stream, log)
        _wait(running)


def _wait(running: dict[str, tuple[subprocess.Popen, object, Path]]) -> None:
    """Wait for every process, a line every 30 s (long work is never silent); the first failure is
    raised once all have ended."""
    start, failed = time.monotonic(), []
    report = start + 30
    try:
        while busy := [name for name, (process, _, _) in running.items() if process.poll() is None]:
            if time.monotonic() >= report:
                report += 30
                print(
                    f"lmms-eval running for {', '.join(busy)} ({time.monotonic() - start:.0f} s; logs: {running[busy[0]][2].parent})",
                    flush=True,
                )
            time.sleep(1)
    finally:
        for name, (process, stream, log) in running.items():
            if process.poll() is None:
                process.kill()
            process.wait()
            stream.close()
            if process.returncode != 0:
                failed.append(f"lmms-eval failed for {name} (exit {process.returncode}); see {log}")
    if failed:
        raise DcrError(failed[0])
