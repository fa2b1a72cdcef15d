"""The world's calibration: the negative control tower is blind to hue and nothing else, and the
controls' effects are read from the LLaVAs' scores as the report states them."""

import json

import pytest
import torch
from PIL import Image

from dcr_mllm.errors import DcrError
from dcr_mllm.evaluation.analysis.significance import compare_world
from dcr_mllm.pipeline.calibrate import control_results, report
from dcr_mllm.towers import load_tower
from dcr_mllm.towers.controls import colour_blind


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


def answers(right: int, attribute: str = "color") -> dict:
    return {f"q{i}": {"attribute": attribute, "kind": "open", "correct": i < right} for i in range(100)}


def test_the_controls_effects_and_the_report(tmp_path):
    samples = {
        "positive": answers(90),
        "positive_seed1": answers(92),
        "negative": answers(40),
        "negative_seed1": answers(44),
        "base": answers(70),
        "base_seed1": answers(72),
    }
    file = tmp_path / "world_significance.json"
    file.write_text(json.dumps(compare_world(samples)))
    towers = {"positive": "ref", "negative": "blind", "base": "world-clip"}
    results = control_results(file, towers, seeds=2)
    positive, negative = results["controls"]["positive"], results["controls"]["negative"]
    assert positive["effect"] == pytest.approx(20.0) and positive["seeds"] == 2 and positive["detected"]
    assert negative["effect"] == pytest.approx(-29.0) and negative["ci"][1] < 0 and negative["detected"]
    assert results["groups"]["negative"]["color"]["base_mean"] == pytest.approx(71.0)
    text = report(results)
    assert "| positive | clip_reference" in text and "| +20.0 | [" in text and "| yes |" in text
    assert "| color | 71.0 | +20.0 (p " in text
    with pytest.raises(DcrError, match="is missing"):
        control_results(tmp_path / "absent.json", towers, 2)
