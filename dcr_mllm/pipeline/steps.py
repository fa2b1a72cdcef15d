"""One function per pipeline step; ``__main__`` parses their arguments. Stages 1-3 launch the
training commands; 4 and 5 score towers and LLaVAs, each keeping what is already current."""

from __future__ import annotations

import os
import time
from pathlib import Path

from dcr_mllm.errors import DcrError
from dcr_mllm.pipeline.launch import cli_command, run


def training_stage(
    command: str,
    config: str,
    nproc: int,
    hostfile: str | None,
    passthrough: list[str],
    env: dict[str, str] | None = None,
) -> None:
    """Stages 1-3: ``dcr-mllm COMMAND --config CONFIG ...`` (``key=value`` overrides and the command's
    own flags passed through); a finished run does nothing, an interrupted one resumes."""
    run(cli_command(nproc, hostfile, [command, "--config", config, *passthrough]), env=env)


class Clock:
    """Step headers with the seconds since the pipeline started."""

    def __init__(self):
        self.start = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def step(self, title: str) -> None:
        print(f"\n=== {title} ({int(self.elapsed())} s)", flush=True)


def llava(
    variant: str,
    config: str,
    passthrough: list[str],
    nproc: int,
    hostfile: str | None,
    clock: Clock,
    env: dict[str, str] | None = None,
) -> None:
    """Stages 2 and 3 for one tower (``passthrough``: its ``tower=`` and ``output_dir=`` overrides)."""
    clock.step(f"2/5 LLaVA pretraining ({variant} tower)")
    training_stage("llava-pretrain", config, nproc, hostfile, passthrough, env)
    clock.step(f"3/5 LLaVA instruction tuning ({variant} tower)")
    training_stage("llava-finetune", config, nproc, hostfile, passthrough, env)


def tower_labels(towers: str) -> list[str]:
    """``"[NAME=]DIR ..."`` -> the ``--tower`` specs, each directory checked to exist (a preset name
    or a hub-style name has no ``/`` and is resolved by ``eval-tower``)."""
    specs = towers.split()
    if not specs:
        raise DcrError('no tower to score: pass --towers "[NAME=]DIR ..."')
    for spec in specs:
        name, sep, path = spec.partition("=")
        path = path if sep and name and "/" not in name else spec
        if "/" in path and not Path(path).is_dir():
            raise DcrError(
                f"tower {path} does not exist: run stages/1_enhance_tower.sh first (it writes outputs/enhance_tiny/tower), "
                "or pass --towers"
            )
    return specs


def tower_benchmarks(out: Path, data: str | None, probe_data: str | None, world: str | None) -> dict[str, list[str]]:
    """Stage 4's benchmarks and each one's data arguments; data not given is a synthetic set
    written (or kept) under ``out/data``, which the reports then mark as synthetic.

    Args:
        out: stage 4's output directory.
        data: an MMVP-VLM directory, or None.
        probe_data: an image folder for the classification probes, or None.
        world: a labelled world set: the world's metrics instead, or None.
    """
    from dcr_mllm.evaluation.tower.synthetic import classification_set, mmvp_vlm_set

    if world:
        return {"world": ["--data", world, "--pairs-per-attribute", "30"]}
    return {
        "mmvp-vlm": ["--data", data or str(mmvp_vlm_set(out / "data" / "mmvp_vlm"))],
        "classification": ["--data", probe_data or str(classification_set(out / "data" / "shapes"))],
        "fine-grained": [],
    }


def eval_tower(
    towers: str, output: str, data: str | None = None, probe_data: str | None = None, world: str | None = None
) -> None:
    """Stage 4: every tower on MMVP-VLM, the classification probes and the fine-grained pairs (or,
    with ``world``, the world's metrics), each report kept when made from the same towers, data and
    settings (``eval-tower --if-changed``); then the summary tables."""
    from dcr_mllm.evaluation.analysis.summary import tower_tables

    specs = tower_labels(towers)
    if world and not (Path(world) / "labels.csv").is_file():
        raise DcrError(
            f"{world} is not a world set (no labels.csv): run dcr-mllm build-world (it writes outputs/world/eval)"
        )
    out = Path(output)
    benchmarks = tower_benchmarks(out, data, probe_data, world)
    tower_args = [word for spec in specs for word in ("--tower", spec)]
    for benchmark, args in benchmarks.items():
        log = out / f"{benchmark}.log"
        run(
            cli_command(
                1,
                None,
                [
                    "eval-tower",
                    *tower_args,
                    "--benchmark",
                    benchmark,
                    *args,
                    "--output",
                    str(out / benchmark),
                    "--if-changed",
                ],
            ),
            log=log,
            failure=f"eval-tower {benchmark} failed; see {log}",
        )
        status = next(
            (line for line in log.read_text().splitlines() if "up to date" in line), f"{benchmark}: {out / benchmark}"
        )
        print(status, flush=True)
    print()
    print("\n".join(tower_tables(out)))


def mllm_data_root() -> Path:
    """Where stage 5's local tasks read their data: ``$DCR_EVAL_DATA``, default ``outputs/eval_data``."""
    return Path(os.environ.get("DCR_EVAL_DATA") or Path("outputs/eval_data").resolve())


def eval_mllm_command(models: str, tasks: str, nproc: int, output: str, offline: bool = False) -> list[str]:
    """Stage 5's ``dcr-mllm eval-mllm`` command line for ``"NAME=DIR[+TOWER] ..."``.

    Args:
        models: the models, space-separated ``NAME=DIR[+TOWER]``.
        tasks: lmms-eval tasks or groups, comma-separated.
        nproc: processes per model.
        output: eval-mllm's output directory.
        offline: keep lmms-eval off the hub (``--offline``).
    """
    specs = models.split()
    if not specs:
        raise DcrError('no model to score: pass --models "NAME=DIR ..."')
    model_args = [word for spec in specs for word in ("--model", spec)]
    command = ["eval-mllm", *model_args, "--tasks", tasks, "--nproc", str(nproc), "--output", output]
    return cli_command(1, None, command + (["--offline"] if offline else []))


def eval_mllm(models: str, tasks: str, nproc: int, output: str, offline: bool = False) -> None:
    """Stage 5: ``eval_mllm_command``, the local data under ``mllm_data_root()``."""
    run(eval_mllm_command(models, tasks, nproc, output, offline), env={"DCR_EVAL_DATA": str(mllm_data_root())})
