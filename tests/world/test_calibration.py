"""The world's calibration: the negative control tower is blind to hue and nothing else, and the
controls' effects are read from the LLaVAs' scores as the report states them."""

import json

import pytest
import torch
from PIL import Image

from dcr_mllm.errors import DcrError
from dcr_mllm.evaluation.analysis.significance import compare_world
from dcr_mllm.pipeline.calibrate import changed_attributes, control_results, report
from dcr_mllm.towers import load_tower
from dcr_mllm.towers.controls import colour_blind
from dcr_mllm.world.scenes import world_eval_set


@torch.no_grad()
def test_the_colour_blind_tower_sees_brightness_and_not_hue(tmp_path):
    base = load_tower("world-clip").eval()
    blind = load_tower(colour_blind("world-clip", tmp_path / "blind")).eval()
    size = base.spec.image_size
    red, green = Image.new("RGB", (size, size), (200, 10, 10)), Image.new("RGB", (size, size), (10, 200, 10))
    bright = Image.new("RGB", (size, size), (200, 200, 10))
    pixels = torch.cat([base.preprocess([image]) for image in (red, green, bright)])
    seen = blind.patch_features(pixels)
    assert torch.allclose(seen[0], seen[1], atol=1e-5)  # equal channel sums: one image to the blind tower
    assert not torch.allclose(seen[0], seen[2], atol=1e-3)  # brighter: still seen
    assert not torch.allclose(base.patch_features(pixels)[0], base.patch_features(pixels)[1], atol=1e-3)
    # everything but the first layer's filters is the base tower's
    changed = {k for k, v in blind.model.state_dict().items() if not torch.equal(v, base.model.state_dict()[k])}
    assert changed == {"vision_model.embeddings.patch_embedding.weight"}


def test_the_attributes_a_control_changes_are_read_from_the_feature_layer(tmp_path):
    val = world_eval_set(tmp_path / "val", seed=3, count=150)
    declared = changed_attributes(
        {"negative": str(colour_blind("world-clip", tmp_path / "blind")), "base": "world-clip"}, val
    )
    assert "color" in declared["changed"]["negative"] and "background" not in declared["changed"]["negative"]
    probes = declared["probes"]
    assert probes["base"]["color"] - probes["negative"]["color"] >= 10
    assert set(probes["base"]) == set(probes["negative"]) and "shape" in probes["base"]


def answers(color: int, position: int) -> dict:
    """100 colour and 100 position questions, the first ``color`` and ``position`` of them right."""
    return {
        f"{attribute}{i}": {"attribute": attribute, "kind": "open", "correct": i < right}
        for attribute, right in (("color", color), ("position", position))
        for i in range(100)
    }


def test_the_controls_effects_and_the_report(tmp_path):
    samples = {
        "positive": answers(90, 50),
        "positive_seed1": answers(92, 54),
        "negative": answers(40, 50),
        "negative_seed1": answers(44, 54),
        "base": answers(70, 50),
        "base_seed1": answers(72, 54),
    }
    file = tmp_path / "world_significance.json"
    file.write_text(json.dumps(compare_world(samples)))
    towers = {"positive": "ref", "negative": "blind", "base": "world-clip"}
    probes = {t: {"color": c, "position": 60.0} for t, c in (("base", 70.0), ("positive", 95.0), ("negative", 40.0))}
    declared = {"probes": probes, "changed": {"positive": ["color"], "negative": []}}
    results = control_results(file, towers, seeds=2, declared=declared)
    positive, negative = results["controls"]["positive"], results["controls"]["negative"]
    # overall: the position questions, unchanged, halve the effect; on the changed attribute it is whole
    assert positive["effect"] == pytest.approx(10.0) and positive["seeds"] == 2
    assert positive["changed"]["attributes"] == ["color"] and positive["changed"]["effect"] == pytest.approx(20.0)
    assert positive["changed"]["detected"] and positive["changed"]["ci"][0] > 0
    assert negative["effect"] == pytest.approx(-14.5) and negative["changed"] is None
    assert results["groups"]["negative"]["color"]["base_mean"] == pytest.approx(71.0)
    results["finetune_steps"] = 500
    text = report(results)
    assert (
        "(500 instruction steps)" in text
        and "| positive | clip_reference" in text
        and "| color | +20.0 | [" in text
        and "| yes |" in text
    )
    assert "| color | 70 / 95 / 40 | 71.0 | +20.0 (p " in text
    with pytest.raises(DcrError, match="is missing"):
        control_results(tmp_path / "absent.json", towers, 2, declared)
