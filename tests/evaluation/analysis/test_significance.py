"""The world comparison's statistics: Wilson intervals and McNemar's exact test, against their closed forms."""

import math

import pytest

from dcr_mllm.errors import DcrError
from dcr_mllm.evaluation.analysis.significance import compare_world
from dcr_mllm.evaluation.intervals import mcnemar_exact, wilson_interval


def test_wilson_interval_matches_its_closed_forms():
    z2 = 1.959963984540054**2
    assert wilson_interval(0, 10) == pytest.approx(
        (0.0, z2 / (10 + z2))
    )  # no successes: the upper end is z^2 / (n + z^2)
    assert wilson_interval(10, 10) == pytest.approx((10 / (10 + z2), 1.0))
    low, high = wilson_interval(300, 600)
    assert (low + high) / 2 == pytest.approx(0.5) and high - low == pytest.approx(
        2 * 1.96 * math.sqrt(0.25 / 600), rel=0.01
    )
    assert wilson_interval(0, 0) == (0.0, 1.0)
    for n in range(1, 40):  # the interval holds the share exactly at the ends, where rounding could leave it outside
        assert wilson_interval(0, n)[0] == 0.0 and wilson_interval(n, n)[1] == 1.0


def test_mcnemar_exact_is_the_two_sided_binomial_tail():
    assert mcnemar_exact(0, 5) == pytest.approx(2 / 32)
    assert mcnemar_exact(1, 9) == mcnemar_exact(9, 1) == pytest.approx(2 * 11 / 1024)
    assert mcnemar_exact(4, 4) == 1.0 and mcnemar_exact(0, 0) == 1.0


def test_compare_world_pairs_the_same_questions():
    first = {f"q{i}": {"attribute": "color", "kind": "open", "correct": i < 70} for i in range(100)}
    second = {f"q{i}": {"attribute": "color", "kind": "open", "correct": 10 <= i < 60} for i in range(100)}
    result = compare_world({"a": first, "b": second})
    assert result["accuracy"]["a"]["color/open"]["accuracy"] == 70.0 and result["accuracy"]["b"]["all"]["n"] == 100
    test = result["paired"]["a vs b"]["color"]
    assert (test["first_only"], test["second_only"], test["difference"]) == (20, 0, 20.0) and test["significant"]
    same = compare_world({"a": first, "b": dict(first)})["paired"]["a vs b"]["all"]
    assert same["p"] == 1.0 and not same["significant"]
    with pytest.raises(DcrError, match="no question in common"):
        compare_world({"a": first, "b": {"x": first["q0"]}})


def test_seeded_models_are_paired_within_a_seed_and_their_towers_judged_over_seeds(tmp_path):
    """``NAME_seedK`` is seed K of NAME: McNemar pairs only models of one seed; the towers' effect is
    Welch's test over their per-seed accuracies, and the summary opens with its verdict."""
    import json

    from dcr_mllm.evaluation.analysis.summary import _tower_effect_tables

    def answers(right: int) -> dict:
        return {f"q{i}": {"attribute": "position", "kind": "open", "correct": i < right} for i in range(100)}

    samples = {"dcr": answers(90), "base": answers(60), "dcr_seed1": answers(92), "base_seed1": answers(62)}
    result = compare_world(samples)
    assert set(result["paired"]) == {"dcr vs base", "dcr_seed1 vs base_seed1"}
    effect = result["towers"]["dcr vs base"]["position"]
    assert (
        effect["base"] == [60.0, 62.0] and effect["other"] == [90.0, 92.0] and effect["effect"] == pytest.approx(30.0)
    )
    assert effect["seeds"] == [[0, 1], [0, 1]] and effect["significant"]
    (tmp_path / "significance.json").write_text(json.dumps(result))
    lines = _tower_effect_tables(tmp_path / "significance.json")
    assert lines[0].startswith("The dcr tower changes its LLaVA by +30.0 points overall")
    assert any(
        line.startswith("| position | 60.0 / 62.0 | 90.0 / 92.0 | 61.0 ± 1.4 | 91.0 ± 1.4 | **+30.0**")
        for line in lines
    )
    one_run = compare_world({"dcr": answers(90), "base": answers(60)})
    assert set(one_run["paired"]) == {"dcr vs base"} and one_run["towers"]["dcr vs base"]["all"]["p"] is None
    (tmp_path / "one.json").write_text(json.dumps(one_run))
    assert "cannot be attributed to the tower" in _tower_effect_tables(tmp_path / "one.json")[0]
