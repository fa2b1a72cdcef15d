"""How sure a world LLaVA comparison is: each accuracy with its 95 % interval (Wilson), and each
difference between two models judged by McNemar's exact test on the questions both answered
(``evaluation/intervals.py`` says why these two).
"""

from __future__ import annotations

from pathlib import Path

from dcr_mllm.errors import DcrError
from dcr_mllm.evaluation.intervals import ALPHA, mcnemar_exact, wilson_interval
from dcr_mllm.strict import loads_json, read_text


def world_samples(run_dir: str | Path, task: str = "world_local") -> dict[str, dict]:
    """``{question_id: {"attribute", "kind", "correct"}}`` from the samples of the world task ``task``
    (``world_local`` or ``world_local_open``) lmms-eval logged under ``run_dir`` (``--log_samples``)."""
    files = sorted(Path(run_dir).rglob(f"*_samples_{task}.jsonl"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise DcrError(
            f"{run_dir} holds no {task} samples file; score the model again (dcr-mllm eval-mllm logs every answer)"
        )
    records = {}
    for number, line in enumerate(read_text(files[-1]).splitlines(), start=1):
        record = loads_json(line, f"{files[-1]} line {number}")
        try:
            record = record["world_accuracy"]
            records[str(record["question_id"])] = {k: record[k] for k in ("attribute", "kind", "correct")}
        except (ValueError, KeyError, TypeError) as err:
            raise DcrError(
                f"{files[-1]} line {number} is not a {task} sample with a world_accuracy record; score the model again"
            ) from err
    return records


def groups(records: dict[str, dict]) -> dict[str, list[str]]:
    """Question ids by group: ``all``, each attribute, each kind, and each ``attribute/kind``."""
    out: dict[str, list[str]] = {"all": sorted(records)}
    for qid in sorted(records):
        record = records[qid]
        for key in (record["attribute"], record["kind"], f"{record['attribute']}/{record['kind']}"):
            out.setdefault(key, []).append(qid)
    return out


def accuracy(records: dict[str, dict], ids: list[str]) -> dict:
    """``{"accuracy", "low", "high", "n"}`` in percent over ``ids``."""
    correct = sum(bool(records[i]["correct"]) for i in ids)
    low, high = wilson_interval(correct, len(ids))
    return {"accuracy": 100 * correct / len(ids), "low": 100 * low, "high": 100 * high, "n": len(ids)}


def paired(first: dict[str, dict], second: dict[str, dict], ids: list[str]) -> dict:
    """The difference first − second over ``ids`` (points), its discordant counts and McNemar's p."""
    first_only = sum(bool(first[i]["correct"]) and not second[i]["correct"] for i in ids)
    second_only = sum(bool(second[i]["correct"]) and not first[i]["correct"] for i in ids)
    p = mcnemar_exact(first_only, second_only)
    return {
        "difference": 100 * (first_only - second_only) / len(ids),
        "first_only": first_only,
        "second_only": second_only,
        "p": p,
        "significant": p < ALPHA,
        "n": len(ids),
    }


def compare_world(samples: dict[str, dict[str, dict]]) -> dict:
    """Every model's accuracy per group with its interval, and each pair of models (in the order
    given) tested on the questions both answered: ``{"accuracy": {model: {group: ...}},
    "paired": {"a vs b": {group: ...}}}``. Models named ``TOWER_seedK`` are seed K of ``TOWER``
    (``seed_effect``): then only models of one seed are paired, and ``"towers": {"a vs b": {group:
    effect}}`` judges each pair of towers over their seeds, the training run as the unit."""
    from dcr_mllm.evaluation.analysis.seed_effect import split_name, tower_effects

    names = list(samples)
    if not names:
        raise DcrError("no world_local samples to compare")
    result = {
        "accuracy": {n: {g: accuracy(samples[n], ids) for g, ids in groups(samples[n]).items()} for n in names},
        "paired": {},
    }
    seeded = any(split_name(n)[1] for n in names)
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            if seeded and split_name(first)[1] != split_name(second)[1]:
                continue
            shared = {q: samples[first][q] for q in samples[first] if q in samples[second]}
            if not shared:
                raise DcrError(
                    f"{first} and {second} answered no question in common; score both on the same world_local data"
                )
            result["paired"][f"{first} vs {second}"] = {
                g: paired(samples[first], samples[second], ids) for g, ids in groups(shared).items()
            }
    towers = list(dict.fromkeys(split_name(n)[0] for n in names))
    result["towers"] = {
        f"{first} vs {second}": tower_effects(result["accuracy"], base=second, other=first)
        for i, first in enumerate(towers)
        for second in towers[i + 1 :]
    }
    return result
