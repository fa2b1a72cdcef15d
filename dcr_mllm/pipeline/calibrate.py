"""``stages/calibrate.sh``: can the world's stage two see a tower effect at all? Two controls go
through the same LLaVA pipeline as the study's towers (the same data, budget and seeds):

- **positive**: ``clip_reference``, the world's CLIP trained on captions that name every attribute
  (the premise's reference): a tower that knows what the base one misses (but, taught no class,
  not the shape: hence the score on the attributes it changes);
- **negative**: the base tower made blind to hue (``towers.controls.colour_blind``): colour reduced
  to three brightness groups, everything else unchanged.

Each tower trains ``seeds`` LLaVAs that differ only in their seed; all are scored on the world's
questions, and each control's effect against the base tower is judged with the training run as the
unit (Welch's t-test over seeds, ``evaluation.analysis.seed_effect``), overall, per attribute and on
the attributes the control changes at the layer the LLaVA reads (declared before any LLaVA is
scored: where the control's and the base's layer −2 probes differ by ``HIDDEN_POINTS`` or more on
the world's validation set), with the smallest effect the spread of the runs could detect.
``OUTPUT/results.json``'s ``controls`` maps ``positive`` and ``negative`` to ``{"effect", "ci", "p",
"seeds", "detectable", "detected"}`` overall and ``"changed"`` (the same on those attributes);
``OUTPUT/report.md`` says whether each was detected. On one CPU process two LLaVAs train side by
side, one thread each.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from dcr_mllm.errors import DcrError
from dcr_mllm.evaluation.analysis.premise import HIDDEN_POINTS
from dcr_mllm.io import write_atomic
from dcr_mllm.pipeline.launch import ONE_THREAD, on_one_cpu, run
from dcr_mllm.pipeline.steps import Clock, eval_mllm, llava

LLAVA_CONFIG = Path("stages/configs/world/llava.yaml")
TASK = "world_local_open"
#: report order: each control, then the base tower they are measured against
TOWERS = ("positive", "negative", "base")
WHAT = {
    "positive": "clip_reference: the world's CLIP trained on captions naming every attribute",
    "negative": "the base tower made blind to hue (colour seen only as brightness)",
    "base": "world-clip, the base tower of the study",
}


def control_towers(output: Path) -> dict[str, str]:
    """The three towers' directories; the negative control is written under ``output/towers`` once."""
    from dcr_mllm.towers.controls import colour_blind
    from dcr_mllm.world.models import default_world_root, ensure_world

    negative = output / "towers" / "colour_blind"
    if not (negative / "config.json").is_file():
        colour_blind("world-clip", negative)
    return {
        "positive": str(ensure_world("clip_reference", default_world_root())),
        "negative": str(negative),
        "base": "world-clip",
    }


def changed_attributes(towers: dict[str, str], val: Path) -> dict:
    """Per control, the attributes whose layer −2 probe (the layer the LLaVA reads) differs from the
    base tower's by ``HIDDEN_POINTS`` or more, in the control's direction, and every probe."""
    from dcr_mllm.evaluation.tower.world_metrics import evaluate_world
    from dcr_mllm.towers import load_tower
    from dcr_mllm.world.scenes import WORLD_VALUES

    scores = {name: evaluate_world(load_tower(path), val, pairs_per_attribute=1) for name, path in towers.items()}
    probes = {name: {a: score[f"probe_layer/{a}"] for a in WORLD_VALUES} for name, score in scores.items()}
    sign = {"positive": 1, "negative": -1}
    changed = {
        control: [a for a in WORLD_VALUES if sign[control] * (probes[control][a] - probes["base"][a]) >= HIDDEN_POINTS]
        for control in sign
        if control in towers
    }
    return {"probes": probes, "changed": changed}


def calibrate(seeds: int = 3, output: str | Path = "outputs/calibration", nproc: int = 1, overwrite: bool = False):
    """Train and score ``seeds`` LLaVAs per tower, then write ``results.json`` and ``report.md``.

    Args:
        seeds: LLaVAs per tower (the config's seed, then the next ones); at least 2 to judge an effect.
        output: where the towers, LLaVAs, scores and report go.
        nproc: processes per training run.
        overwrite: train every LLaVA again.
    """
    from dcr_mllm.config import load_config
    from dcr_mllm.evaluation.analysis.seed_effect import seeded_name
    from dcr_mllm.llava.train.recipe import LlavaTrainConfig
    from dcr_mllm.pipeline.run_all import SideJob
    from dcr_mllm.world.prepare import VAL_COUNT, VAL_SEED
    from dcr_mllm.world.scenes import world_eval_set

    if seeds < 2:
        raise DcrError(f"--seeds {seeds}: an effect over training runs needs at least 2 LLaVAs per tower (3 or more)")
    output = Path(output)
    recipe = load_config(LlavaTrainConfig, LLAVA_CONFIG)
    first_seed = recipe.seed
    clock = Clock()
    clock.step("0/3 build the world and the control towers")
    run([sys.executable, "-m", "dcr_mllm.cli", "build-world", "--output", "outputs/world"])
    towers = control_towers(output)
    declared = changed_attributes(towers, world_eval_set(Path("outputs/world/val"), VAL_SEED, VAL_COUNT))
    write_atomic(output / "changed_attributes.json", json.dumps(declared, indent=1) + "\n")
    runs = {
        seeded_name(tower, k): [
            f"tower={towers[tower]}",
            f"output_dir={output / 'llava' / seeded_name(tower, k)}",
            f"seed={first_seed + k}",
            *(["--overwrite"] if overwrite else []),
        ]
        for tower in TOWERS
        for k in range(seeds)
    }
    names = list(runs)
    clock.step(f"1/3 train {len(names)} LLaVAs ({seeds} per tower)")
    if on_one_cpu(nproc, None):  # two lanes, one thread each
        side = [["llava", "--variant", n, "--config", str(LLAVA_CONFIG), *runs[n]] for n in names[1::2]]
        with SideJob(side, output / "logs" / "side_lane.log") as lane:
            for name in names[0::2]:
                llava(name, str(LLAVA_CONFIG), runs[name], nproc, None, clock, env=ONE_THREAD)
            lane.wait()
    else:
        for name in names:
            llava(name, str(LLAVA_CONFIG), runs[name], nproc, None, clock)
    clock.step("2/3 score the LLaVAs (world questions)")
    models = " ".join(f"{name}={output / 'llava' / name}/model" for name in names)
    eval_mllm(models, TASK, nproc, str(output / "eval"))
    clock.step("3/3 the controls' effects")
    shown = {**towers, "positive": "clip_reference (the world's cache)"}  # no machine's home directory in results
    results = control_results(output / "eval" / "report" / "world_significance.json", shown, seeds, declared)
    results["finetune_steps"] = recipe.finetune.max_steps
    text = report(results)
    write_atomic(output / "results.json", json.dumps(results, indent=1) + "\n")
    write_atomic(output / "report.md", text)
    print(text)
    print(f"(report: {output / 'report.md'}; {int(clock.elapsed())} s)")


def control_results(significance_file: Path, towers: dict[str, str], seeds: int, declared: dict) -> dict:
    """Each control's effect against the base tower over seeds, overall, on the attributes it changes
    and per question group.

    Args:
        significance_file: the LLaVAs' ``world_significance.json`` (models named ``TOWER[_seedK]``).
        towers: each tower's directory or preset, as the results show it.
        seeds: LLaVAs per tower.
        declared: ``changed_attributes``' result: the attributes each control changes, the probes.
    """
    from dcr_mllm.evaluation.analysis.seed_effect import tower_effects

    if not significance_file.is_file():
        raise DcrError(f"{significance_file} is missing: the LLaVAs were not scored on {TASK}")
    comparison = json.loads(significance_file.read_text(encoding="utf-8"))
    controls, groups = {}, {}
    for control in ("positive", "negative"):
        effects = comparison["towers"].get(f"{control} vs base")
        if not effects:
            raise DcrError(f"{significance_file} has no {control} vs base comparison; score every LLaVA again")
        changed = declared["changed"][control]
        on_changed = None
        if changed:  # the questions on those attributes pooled into one group per LLaVA, judged over seeds
            pooled = {n: {"changed": {"accuracy": _pooled(a, changed)}} for n, a in comparison["accuracy"].items()}
            on_changed = {"attributes": changed, **_summary(tower_effects(pooled, "base", control)["changed"])}
        controls[control] = {
            **_summary(effects["all"]),
            "changed": on_changed,
        }
        groups[control] = {
            group: {k: e[k] for k in ("effect", "low", "high", "p", "detectable", "base_mean", "other_mean")}
            for group, e in effects.items()
        }
    return {
        "task": TASK,
        "seeds": seeds,
        "towers": towers,
        "controls": controls,
        "groups": groups,
        "probes_layer": declared["probes"],
    }


def _summary(effect: dict) -> dict:
    return {
        "effect": effect["effect"],
        "ci": [float(effect["low"]), float(effect["high"])],
        "p": effect["p"],
        "seeds": min(effect["n"]),
        "detectable": effect["detectable"],
        "detected": bool(effect["significant"]),
    }


def _pooled(accuracy: dict, attributes: list[str]) -> float:
    """Accuracy (percent) over every question on ``attributes``."""
    right = sum(accuracy[a]["accuracy"] * accuracy[a]["n"] for a in attributes)
    return right / sum(accuracy[a]["n"] for a in attributes)


def report(results: dict) -> str:
    """The calibration in words and tables: each control detected or not, overall and on the
    attributes it changes at the feature layer, then per attribute."""
    from dcr_mllm.world.scenes import WORLD_VALUES

    lines = [
        "# Calibration of the world's stage two",
        "",
        f"{results['seeds']} LLaVAs per tower ({results['finetune_steps']} instruction steps) on {results['task']}, "
        "each control against the base tower "
        "(Welch's t-test over seeds; 95 % interval; the smallest effect detectable with 80 % power). "
        "Changed: the questions on the attributes whose layer −2 probe differs from the base tower's by "
        f"{HIDDEN_POINTS:g} points or more (declared before any LLaVA is scored).",
        "",
        "| control | tower | questions | effect (points) | 95 % interval | p | detectable | detected |",
        "|---|---|---|---:|---|---:|---:|---|",
    ]
    for control, c in results["controls"].items():
        rows = [("all", c)]
        if c["changed"]:
            rows.append((", ".join(c["changed"]["attributes"]), c["changed"]))
        for questions, e in rows:
            low, high = e["ci"]
            lines.append(
                f"| {control} | {WHAT[control]} | {questions} | {e['effect']:+.1f} | [{low:+.1f}, {high:+.1f}] | "
                f"{e['p']:.2g} | {e['detectable']:.1f} | {'yes' if e['detected'] else 'no'} |"
            )
    probes = results["probes_layer"]
    lines += [
        "",
        "Per attribute: layer −2 probe of each tower (validation set), accuracy of the base LLaVAs, "
        "each control's effect in points (p):",
        "",
        "| attribute | probe: base / positive / negative | base LLaVAs | positive | negative |",
        "|---|---|---:|---:|---:|",
    ]
    for attribute in WORLD_VALUES:
        rows = [results["groups"][c].get(attribute) for c in ("positive", "negative")]
        if not all(rows):
            continue
        probe = " / ".join(f"{probes[t][attribute]:.0f}" for t in ("base", "positive", "negative"))
        cells = [f"{r['effect']:+.1f} (p {r['p']:.2g})" for r in rows]
        lines.append(f"| {attribute} | {probe} | {rows[0]['base_mean']:.1f} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n"


__all__ = ["calibrate", "changed_attributes", "control_results", "report"]
