"""Score several towers on one benchmark, or several, and write the report; ``dcr-mllm eval-tower``
calls this.

Benchmarks: ``mmvp-vlm`` (a directory in the official layout), ``classification`` (zero-shot and
linear-probe top-1 on an image folder: D-Ability), ``fine-grained`` (synthetic pairs that differ
in one attribute: P-Ability, with MMVP-VLM), ``clip-benchmark`` (zero-shot classification and
retrieval on clip_benchmark's data sets: ``clip_bench``) and ``world`` (the tiny world's labelled
set: ``world_metrics``). Every input is checked before any model is loaded, towers are scored one
at a time, and the report goes to ``output`` (``report``), with the number each tower's authors
report beside its own where one is published (``reported_scores``).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path

import torch

from dcr_mllm.errors import DcrError
from dcr_mllm.evaluation import freshness
from dcr_mllm.evaluation.tower.mmvp_vlm import PREPROCESS, evaluate_mmvp_vlm, read_benchmark
from dcr_mllm.evaluation.tower.probes import ClassificationData, evaluate_classification, evaluate_fine_grained
from dcr_mllm.evaluation.tower.report import BenchmarkResult, write_comparison, write_report
from dcr_mllm.evaluation.tower.synthetic import fine_grained_pairs
from dcr_mllm.strict import read_json
from dcr_mllm.towers import inspect_tower, load_tower

logger = logging.getLogger("dcr_mllm.evaluation")

BENCHMARKS = {
    "mmvp-vlm": "MMVP-VLM",
    "classification": "Classification probes (D-Ability): zero-shot and linear probe",
    "fine-grained": "Fine-grained pairs (P-Ability): synthetic pairs differing in one attribute",
    "clip-benchmark": "Zero-shot classification and retrieval (clip_benchmark's data sets)",
    "world": "The tiny world: pairs, per-attribute linear probes (global embedding, feature layer), class zero-shot and probe",
}
NEEDS_NO_DATA = ("fine-grained",)


def parse_tower_args(specs: list[str]) -> dict[str, str]:
    """``NAME=DIR`` or ``DIR`` (labelled by the path as given) -> ``{label: tower}``, in order."""
    towers = {}
    for spec in specs:
        label, sep, path = spec.partition("=")
        label, path = (label, path) if sep and label and "/" not in label else (spec, spec)
        if not path:
            raise DcrError(f"--tower {spec!r} names no tower: use --tower DIR or --tower NAME=DIR")
        if label in towers:
            raise DcrError(f"two towers are labelled {label!r}: give them distinct names with --tower NAME=DIR")
        towers[label] = path
    if not towers:
        raise DcrError("no tower to evaluate: pass --tower DIR (or NAME=DIR) at least once")
    return towers


def benchmark_scorer(
    benchmark: str,
    data: str | Path | None,
    batch_size: int = 64,
    pairs_per_attribute: int = 20,
    image_size: int = 224,
    seed: int = 0,
    preprocess: str = "tower",
) -> Callable[[object], BenchmarkResult]:
    """``score(tower) -> BenchmarkResult`` for one benchmark, its data read and checked once, now
    (``evaluate_towers`` and the evaluation during training both use it).

    Args:
        benchmark: a key of ``BENCHMARKS``.
        data: the benchmark directory or image folder; None for ``fine-grained``, which generates its pairs.
        batch_size: images or texts encoded at once.
        pairs_per_attribute: pairs generated per attribute (``fine-grained``, ``world``).
        image_size: side of the generated pair images in pixels (``fine-grained``).
        seed: seeds the generated pairs (``fine-grained``).
        preprocess: MMVP-VLM's pixels: "tower" or "official".
    """
    if benchmark == "mmvp-vlm":
        return functools.partial(
            evaluate_mmvp_vlm, data_dir=data, batch_size=batch_size, pairs=read_benchmark(data), preprocess=preprocess
        )
    if benchmark == "classification":
        return functools.partial(evaluate_classification, data=ClassificationData(data), batch_size=batch_size)
    if benchmark == "clip-benchmark":
        from dcr_mllm.evaluation.tower.clip_bench import evaluate_clip_benchmark, read_clip_benchmark

        return functools.partial(evaluate_clip_benchmark, sets=read_clip_benchmark(data), batch_size=batch_size)
    if benchmark == "world":
        from dcr_mllm.evaluation.tower.world_metrics import WorldSet, evaluate_world

        world = WorldSet.read(data, pairs_per_attribute)  # its labels checked before any tower loads

        def score_world(tower) -> BenchmarkResult:
            outcomes: dict[str, list[bool]] = {}
            return BenchmarkResult(evaluate_world(tower, world, outcomes=outcomes), [], outcomes)

        return score_world
    return functools.partial(
        evaluate_fine_grained, pairs=fine_grained_pairs(pairs_per_attribute, image_size, seed), batch_size=batch_size
    )


def evaluate_towers(
    towers: dict[str, str],
    benchmark: str,
    output: str | Path,
    data: str | Path | None = None,
    batch_size: int = 64,
    device: str | None = None,
    pairs_per_attribute: int = 20,
    image_size: int = 224,
    seed: int = 0,
    preprocess: str = "tower",
    allow_pickle: bool = False,
    if_changed: bool = False,
) -> dict[str, dict[str, float]]:
    """Score each tower on ``benchmark`` and write the report to ``output``; returns ``{label: {metric: percent}}``.

    ``data`` is the benchmark directory (``mmvp-vlm``) or image folder (``classification``);
    ``fine-grained`` generates its pairs from ``pairs_per_attribute``, ``image_size`` and ``seed``;
    ``preprocess`` ("tower" or "official") picks MMVP-VLM's pixels (see ``mmvp_vlm``); ``allow_pickle``
    lets towers with only .bin weights load (restricted unpickler); ``if_changed`` keeps a report
    made from the same towers, data and settings (``freshness``) instead of scoring again.

    Args:
        towers: tower directory by label (``parse_tower_args``), in report order.
        benchmark: a key of ``BENCHMARKS``.
        output: the report directory.
        data: the benchmark's data, as above; None for ``fine-grained``.
        batch_size: images or texts encoded at once.
        device: where the towers run; None: cuda if available, else cpu.
        pairs_per_attribute: pairs per attribute (``fine-grained``, ``world``).
        image_size: side of the generated pair images in pixels (``fine-grained``).
        seed: seeds the generated pairs (``fine-grained``).
        preprocess: MMVP-VLM's pixels, as above.
        allow_pickle: load .bin-only towers, as above.
        if_changed: keep a current report, as above.
    """
    if benchmark not in BENCHMARKS:
        raise DcrError(f"unknown benchmark {benchmark!r}: use one of {', '.join(BENCHMARKS)}")
    if batch_size < 1:
        raise DcrError(f"batch size {batch_size}: must be at least 1")
    if preprocess not in PREPROCESS:
        raise DcrError(f"preprocess {preprocess!r}: use one of {', '.join(PREPROCESS)}")
    if preprocess != "tower" and benchmark != "mmvp-vlm":
        raise DcrError(f"--preprocess {preprocess} reproduces the official MMVP-VLM script; drop it for {benchmark}")
    if benchmark in NEEDS_NO_DATA:
        if data is not None:
            raise DcrError("the fine-grained benchmark generates its own pairs: drop --data")
    elif data is None:
        raise DcrError(
            f"the {benchmark} benchmark reads a dataset: pass --data DIR "
            f"(or write a synthetic one with `dcr-mllm make-eval-data {benchmark} --output DIR`)"
        )
    elif not Path(data).is_dir():
        raise DcrError(f"--data {data} is not a directory: check the path")
    for path in towers.values():
        inspect_tower(path, allow_pickle)
    made_up = "synthetic-fine-grained-pairs" if benchmark == "fine-grained" else freshness.generator(data)
    settings = {
        "benchmark": benchmark,
        "towers": towers,
        "pairs_per_attribute": pairs_per_attribute,
        "preprocess": preprocess,
        **({"image_size": image_size, "seed": seed} if benchmark == "fine-grained" else {}),
        **({"synthetic_data": made_up} if made_up else {}),  # the summary marks its row
    }
    record = freshness.made_from(settings, {**{f"tower/{label}": path for label, path in towers.items()}, "data": data})
    if if_changed and freshness.is_current(output, record):
        print(f"{benchmark}: up to date in {output}")
        return read_json(Path(output) / "results.json")

    score = benchmark_scorer(benchmark, data, batch_size, pairs_per_attribute, image_size, seed, preprocess)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    results = {}
    for label, path in towers.items():
        logger.info("scoring %s (%s) on %s", label, path, benchmark)
        tower = load_tower(path, allow_pickle=allow_pickle).to(device).eval()
        results[label] = score(tower)
        results[label].reported = reported_scores(path, benchmark)
        del tower  # freed before the next one loads
    source = (
        f"data: `{data}`" + (f", {pairs_per_attribute} pairs per attribute" if benchmark == "world" else "")
        if data is not None
        else f"{pairs_per_attribute} pairs per attribute, {image_size} px, seed {seed}"
    )
    if benchmark == "mmvp-vlm":
        source += f", {preprocess} preprocessing"
    note = source + "; towers: " + ", ".join(f"{label} = `{path}`" for label, path in towers.items())
    if made_up:
        note = freshness.synthetic_note({benchmark: made_up}) + "\n\n" + note
    write_report(output, BENCHMARKS[benchmark], results, note)
    freshness.mark_current(output, record)
    return {label: result.scores for label, result in results.items()}


def reported_scores(tower: str | Path, benchmark: str) -> dict[str, tuple[float, str]]:
    """The MMVP-VLM average the authors of ``tower`` report: a released tower that ``convert-tower
    --preset`` wrote (its record names the preset), or a base backbone preset, as the release tables
    print its score (each method's table names the base beside its own)."""
    from dcr_mllm.presets.real import real_preset
    from dcr_mllm.presets.released import RECORD, RELEASED

    if benchmark != "mmvp-vlm":
        return {}
    record = Path(tower) / RECORD
    if record.is_file():
        release = RELEASED.get(read_json(record).get("preset"))
        return {"average": (release.mmvp_vlm, f"{release.method}, {release.reported}")} if release else {}
    backbone = real_preset(str(tower))
    printed = [r for r in RELEASED.values() if backbone is not None and r.base == backbone.name]
    if not printed:
        return {}
    values = [r.mmvp_vlm_base for r in printed]
    value = max(set(values), key=values.count)  # what most tables print (DCR's 19.2 against 19.3)
    return {"average": (value, "; ".join(f"{r.method} prints {r.mmvp_vlm_base} ({r.reported})" for r in printed))}


def evaluate_benchmarks(
    towers: dict[str, str], benchmarks: dict[str, str | Path | None], output: str | Path, **settings
) -> dict[str, dict[str, float]]:
    """Each benchmark's report in ``output/<benchmark>``, then one table and one chart of them all
    in ``output``; every benchmark's data is checked before the first tower is scored.

    Args:
        towers: tower directory by label, in report order.
        benchmarks: each benchmark's data (None where it needs none), in report order.
        output: the report directory.
        **settings: ``evaluate_towers``'s other arguments, shared by every benchmark.
    """
    for benchmark, data in benchmarks.items():
        if benchmark not in BENCHMARKS:
            raise DcrError(f"unknown benchmark {benchmark!r}: use one of {', '.join(BENCHMARKS)}")
        if (data is None) != (benchmark in NEEDS_NO_DATA):
            raise DcrError(
                f"--benchmark {benchmark}" + (" needs no data" if data is not None else " needs its data: NAME=DATA")
            )
        if data is not None and not Path(data).is_dir():
            raise DcrError(f"--benchmark {benchmark}={data}: no such directory")
    output = Path(output)
    reports, made_up = {}, {}
    for benchmark, data in benchmarks.items():
        evaluate_towers(towers, benchmark, output / benchmark, data=data, **settings)
        reports[benchmark] = output / benchmark
        generator = read_json(output / benchmark / freshness.RECORD)["settings"].get("synthetic_data")
        if generator:
            made_up[benchmark] = generator
    note = "towers: " + ", ".join(f"{label} = `{path}`" for label, path in towers.items())
    write_comparison(output, reports, (freshness.synthetic_note(made_up) + "\n\n" if made_up else "") + note)
    return read_json(output / "results.json")
