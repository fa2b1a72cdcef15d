"""Does the tower change its LLaVA? The training run is the unit: N LLaVAs per tower that differ
only in their seed, each scored on the same questions, compared by their per-seed accuracies.

A question-level paired test (McNemar's, ``significance``) on one LLaVA per tower asks whether
those two *trained models* differ; a second training run of the same tower moves the accuracies
by more than the questions' sampling error (the world's position questions: 93.5 vs 58.2 on one
CPU, 93.2 vs 98.8 on another), so that test says nothing about the towers. Here each tower's
per-seed accuracies are a sample of its training runs, and the effect is tested with Welch's
two-sample t-test: the seed is the unit, the two towers may vary by different amounts, and with
few seeds the t distribution (not the normal) sets the interval. An accuracy over 600 questions
is close to normal, so the t-test's assumption holds well enough; a permutation test would be
exact but cannot reach p < 0.05 with 3 seeds per tower (20 splits: p >= 0.1). The smallest
detectable effect is the one Welch's test finds with 80 % power at the observed spread,
``(t(1 - alpha/2) + t(power)) * se``. Simulations with a known truth (no effect, a known effect)
check the test's false-positive rate, its power and its interval's coverage (tests).
"""

from __future__ import annotations

import math
import re
import statistics

ALPHA, POWER = 0.05, 0.8
SEED_NAME = re.compile(r"^(?P<tower>.+)_seed(?P<seed>\d+)$")


def split_name(name: str) -> tuple[str, int]:
    """``"dcr_seed2"`` -> ``("dcr", 2)``; a name without ``_seedK`` is seed 0 of itself."""
    match = SEED_NAME.match(name)
    return (match["tower"], int(match["seed"])) if match else (name, 0)


def seeded_name(tower: str, seed: int) -> str:
    """The model name of ``tower``'s LLaVA trained with ``seed`` (seed 0 keeps the plain name)."""
    return tower if seed == 0 else f"{tower}_seed{seed}"


def seed_effect(base: list[float], other: list[float], alpha: float = ALPHA, power: float = POWER) -> dict:
    """``other - base`` over per-seed accuracies (points): each tower's mean and std, the effect
    with its ``1 - alpha`` Welch interval and p-value, and the smallest effect detectable with
    ``power``; with fewer than two seeds a tower the test, interval and detectable effect are None.

    Args:
        base: the base tower's accuracy per seed (percent).
        other: the other tower's accuracy per seed (percent).
        alpha: the test's level (the interval is ``1 - alpha``).
        power: the chance of detecting the reported smallest effect.
    """
    from scipy import stats

    out = {
        "base": list(base),
        "other": list(other),
        "n": [len(base), len(other)],
        "base_mean": statistics.fmean(base),
        "other_mean": statistics.fmean(other),
    }
    out["effect"] = out["other_mean"] - out["base_mean"]
    if min(len(base), len(other)) < 2:
        return {
            **out,
            "base_std": None,
            "other_std": None,
            "low": None,
            "high": None,
            "p": None,
            "significant": False,
            "detectable": None,
        }
    vb, vo = statistics.variance(base), statistics.variance(other)
    out["base_std"], out["other_std"] = math.sqrt(vb), math.sqrt(vo)
    se = math.sqrt(vb / len(base) + vo / len(other))
    if se == 0:  # every run of both towers scored the same: no spread to judge a difference against
        same = out["effect"] == 0
        return {
            **out,
            "low": out["effect"],
            "high": out["effect"],
            "p": 1.0 if same else 0.0,
            "significant": not same,
            "detectable": 0.0,
        }
    df = se**4 / (
        (vb / len(base)) ** 2 / (len(base) - 1) + (vo / len(other)) ** 2 / (len(other) - 1)
    )  # Welch-Satterthwaite
    half = stats.t.ppf(1 - alpha / 2, df) * se
    p = float(2 * stats.t.sf(abs(out["effect"]) / se, df))
    return {
        **out,
        "low": out["effect"] - half,
        "high": out["effect"] + half,
        "p": p,
        "significant": p < alpha,
        "df": df,
        "detectable": float((stats.t.ppf(1 - alpha / 2, df) + stats.t.ppf(power, df)) * se),
    }


def tower_effects(accuracy: dict[str, dict[str, dict]], base: str, other: str) -> dict[str, dict]:
    """Per question group, ``seed_effect`` of tower ``other`` against tower ``base`` over every
    seed each was scored with.

    Args:
        accuracy: per model, per question group, ``{"accuracy": percent, ...}`` (``compare_world``'s;
            models named ``TOWER[_seedK]``).
        base: the tower the effect is measured against.
        other: the tower whose effect is measured.
    """
    runs = {
        tower: sorted((seed, name) for name in accuracy for t, seed in [split_name(name)] if t == tower)
        for tower in (base, other)
    }
    if not runs[base] or not runs[other]:
        return {}
    groups = [
        g
        for g in accuracy[runs[base][0][1]]
        if all(g in accuracy[name] for runs_ in runs.values() for _, name in runs_)
    ]
    return {
        g: {
            **seed_effect(
                [accuracy[name][g]["accuracy"] for _, name in runs[base]],
                [accuracy[name][g]["accuracy"] for _, name in runs[other]],
            ),
            "seeds": [[seed for seed, _ in runs[base]], [seed for seed, _ in runs[other]]],
        }
        for g in groups
    }


def verdict(effects: dict[str, dict], base: str, other: str) -> str:
    """One sentence on the tower effect overall (``all``), in words."""
    overall = effects["all"]
    n = min(overall["n"])
    if n < 2:
        return (
            f"One training run per tower: the {other} − {base} difference ({overall['effect']:+.1f} points) cannot be "
            "attributed to the tower; run with --seeds 3 or more."
        )
    if overall["significant"]:
        return (
            f"The {other} tower changes its LLaVA by {overall['effect']:+.1f} points overall [{overall['low']:+.1f}, {overall['high']:+.1f}] "
            f"(Welch's t-test over N = {n} seeds per tower, p = {overall['p']:.2g})."
        )
    return (
        f"No detectable tower effect at N = {n} seeds per tower: {other} − {base} {overall['effect']:+.1f} points overall "
        f"[{overall['low']:+.1f}, {overall['high']:+.1f}], p = {overall['p']:.2g}; could detect ≥ {overall['detectable']:.1f} points "
        f"(80 % power)."
    )
