"""The tower effect over training seeds, against simulations whose truth is known."""

import random

import pytest

from dcr_mllm.evaluation.analysis.seed_effect import seed_effect, seeded_name, split_name, tower_effects, verdict
from dcr_mllm.evaluation.intervals import mcnemar_exact

RUN_SPREAD = 3.0  # points: how far one training run's accuracy falls from its tower's mean


def runs(rng: random.Random, mean: float, n: int) -> list[float]:
    return [rng.gauss(mean, RUN_SPREAD) for _ in range(n)]


def test_a_hand_computed_welch_test():
    # base 90, 92, 94 (mean 92, var 4); other 95, 96, 97 (mean 96, var 1): se = sqrt(4/3 + 1/3), t = 4 / se = 3.098,
    # Welch df = (5/3)^2 / ((4/3)^2/2 + (1/3)^2/2) = 2.941; two-sided p = 0.0547 (scipy.stats.ttest_ind(equal_var=False))
    effect = seed_effect([90, 92, 94], [95, 96, 97])
    assert (
        effect["effect"] == pytest.approx(4.0)
        and effect["base_std"] == pytest.approx(2.0)
        and effect["other_std"] == pytest.approx(1.0)
    )
    assert (
        effect["df"] == pytest.approx(2.941, abs=1e-3)
        and effect["p"] == pytest.approx(0.0547, abs=5e-4)
        and not effect["significant"]
    )
    assert effect["low"] < 0 < effect["high"] and effect["detectable"] > 4.0


def test_no_effect_is_found_about_one_time_in_twenty():
    rng = random.Random(0)
    trials = 2000
    found = sum(seed_effect(runs(rng, 90, 3), runs(rng, 90, 3))["significant"] for _ in range(trials))
    assert 0.02 < found / trials < 0.07  # alpha 0.05 (Welch is slightly conservative)


def test_a_known_effect_is_covered_by_the_interval_and_the_detectable_one_is_found_with_its_power():
    rng = random.Random(1)
    trials, n, true = 2000, 5, 4.0
    results = [seed_effect(runs(rng, 90, n), runs(rng, 90 + true, n)) for _ in range(trials)]
    coverage = sum(r["low"] <= true <= r["high"] for r in results) / trials
    assert 0.93 < coverage < 0.97
    detectable = sorted(r["detectable"] for r in results)[trials // 2]  # its typical value at this spread
    power = (
        sum(seed_effect(runs(rng, 90, n), runs(rng, 90 + detectable, n))["significant"] for _ in range(trials)) / trials
    )
    assert 0.65 < power < 0.9  # about the 80 % it is computed for (the spread itself is estimated)
    assert (
        sum(seed_effect(runs(rng, 90, n), runs(rng, 90 + 3 * detectable, n))["significant"] for _ in range(200)) > 190
    )


def test_mcnemar_on_one_run_per_tower_calls_run_to_run_variation_a_difference():
    """Why the seed is the unit: with no tower effect at all, one run per tower and 600 questions,
    the question-level paired test declares a difference most of the time."""
    rng = random.Random(2)
    trials, questions, found = 200, 600, 0
    for _ in range(trials):
        first, second = (min(1.0, rng.gauss(90, RUN_SPREAD) / 100) for _ in range(2))
        a = [rng.random() < first for _ in range(questions)]
        b = [rng.random() < second for _ in range(questions)]
        found += mcnemar_exact(sum(x and not y for x, y in zip(a, b)), sum(y and not x for x, y in zip(a, b))) < 0.05
    assert found / trials > 0.4


def test_one_seed_per_tower_gives_no_test_and_says_so():
    effect = seed_effect([93.5], [58.2])
    assert effect["effect"] == pytest.approx(-35.3) and effect["p"] is None and not effect["significant"]
    assert "cannot be attributed to the tower" in verdict({"all": effect}, "base", "dcr")


def test_tower_effects_group_models_by_their_seed_names():
    assert (
        split_name("dcr_seed2") == ("dcr", 2) and split_name("dcr") == ("dcr", 0) and seeded_name("base", 0) == "base"
    )
    accuracy = {
        seeded_name(tower, seed): {"all": {"accuracy": value}, "position": {"accuracy": value + 1}}
        for tower, values in (("base", (90, 91, 92)), ("dcr", (95, 96, 97)))
        for seed, value in enumerate(values)
    }
    effects = tower_effects(accuracy, "base", "dcr")
    assert effects["all"]["effect"] == pytest.approx(5.0) and effects["all"]["seeds"] == [[0, 1, 2], [0, 1, 2]]
    assert effects["all"]["significant"] and effects["position"]["base"] == [91, 92, 93]
    assert verdict(effects, "base", "dcr").startswith("The dcr tower changes its LLaVA by +5.0 points")
    flat = tower_effects(
        {seeded_name(t, s): {"all": {"accuracy": 90.0 + s % 2}} for t in ("base", "dcr") for s in range(3)},
        "base",
        "dcr",
    )
    assert verdict(flat, "base", "dcr").startswith("No detectable tower effect at N = 3 seeds per tower")
