"""Classification probes (zero-shot, linear probe, splits) and the fine-grained pairs probe."""

import dataclasses

import pytest
import torch
from PIL import Image

from dcr_mllm.data.synthetic import ATTRIBUTE_VALUES
from dcr_mllm.errors import DcrError
from dcr_mllm.evaluation.tower import (
    ClassificationData,
    evaluate_classification,
    evaluate_fine_grained,
    fine_grained_pairs,
    fit_linear_probe,
    write_classification_folder,
)
from dcr_mllm.evaluation.tower.probes import predict_linear_probe
from dcr_mllm.towers import load_tower


def solid_folder(root, counts):
    """``root/<colour>/<i>.png``: ``counts[colour]`` solid images of each colour."""
    for colour, count in counts.items():
        (root / colour).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (8, 8), colour).save(root / colour / f"{i}.png")
    return root


def test_known_answers_score_full_marks(tmp_path, colour_tower):
    result = evaluate_classification(colour_tower, solid_folder(tmp_path, {"red": 5, "green": 5, "blue": 5}))
    assert result.scores == {"zero_shot_top1": 100.0, "linear_probe_top1": 100.0}
    assert len(result.predictions) == 3 and {p["label"] for p in result.predictions} == {"red", "green", "blue"}
    assert all(p["zero_shot"] == p["label"] == p["linear_probe"] for p in result.predictions)


def test_hash_split_is_per_class_disjoint_and_stable(tmp_path):
    root = solid_folder(tmp_path / "folder", {"red": 10, "green": 3, "blue": 2})
    data = ClassificationData(root)
    assert data.classes == ["blue", "green", "red"]
    test_per_class = [sum(label == c for _, label in data.test) for c in range(3)]
    assert test_per_class == [1, 1, 2]  # ceil(n / 5)
    assert not {p for p, _ in data.train} & {p for p, _ in data.test}
    assert len(data.train) + len(data.test) == 15
    moved = root.rename(tmp_path / "elsewhere")  # the split depends on paths relative to the folder only
    assert [p.name for p, _ in ClassificationData(moved).test] == [p.name for p, _ in data.test]


def test_train_and_test_folders_are_used_as_given(tmp_path):
    solid_folder(tmp_path / "train", {"red": 2, "blue": 2})
    solid_folder(tmp_path / "test", {"red": 1, "blue": 3})
    data = ClassificationData(tmp_path)
    assert len(data.train) == 4 and [label for _, label in data.test] == [0, 0, 0, 1]  # blue, blue, blue, red
    solid_folder(tmp_path / "test", {"green": 1})
    with pytest.raises(DcrError, match=r"test has classes that .*train lacks \(green\)"):
        ClassificationData(tmp_path)


def test_bad_image_folders_are_named(tmp_path):
    with pytest.raises(DcrError, match="does not exist"):
        ClassificationData(tmp_path / "missing")
    with pytest.raises(DcrError, match="has 1 class folders"):
        ClassificationData(solid_folder(tmp_path / "one", {"red": 3}))
    with pytest.raises(DcrError, match=r"class folder .*blue has one image"):
        ClassificationData(solid_folder(tmp_path / "few", {"red": 3, "blue": 1}))
    (tmp_path / "empty" / "red").mkdir(parents=True)
    solid_folder(tmp_path / "empty", {"blue": 2})
    with pytest.raises(DcrError, match=r"class folder .*red has no images"):
        ClassificationData(tmp_path / "empty")


def test_linear_probe_separates_clusters_deterministically():
    generator = torch.Generator().manual_seed(0)
    centres = torch.nn.functional.normalize(torch.randn(3, 8, generator=generator), dim=1)
    labels = torch.arange(3).repeat_interleave(20)
    features = torch.nn.functional.normalize(centres[labels] + 0.05 * torch.randn(60, 8, generator=generator), dim=1)
    weight = fit_linear_probe(features, labels, 3)
    assert torch.equal(predict_linear_probe(weight, features), labels)
    assert torch.equal(weight, fit_linear_probe(features, labels, 3))


def test_classification_with_a_tiny_tower(tiny, tmp_path):
    root = write_classification_folder(tmp_path / "shapes", per_class=3, image_size=32)
    result = evaluate_classification(load_tower(tiny["clip"]), root, batch_size=5)
    assert set(result.scores) == {"zero_shot_top1", "linear_probe_top1"}
    assert all(0 <= v <= 100 for v in result.scores.values())
    assert len(result.predictions) == 12 and result.predictions[0]["image"].startswith(str(root / "test"))


def test_fine_grained_pairs_differ_in_their_attribute_only():
    pairs = fine_grained_pairs(3, image_size=16, seed=1)
    assert [a for a, _, _ in pairs] == [a for a in ATTRIBUTE_VALUES for _ in range(3)]
    for attribute, (attrs1, _), (attrs2, _) in pairs:
        changed = [f.name for f in dataclasses.fields(attrs1) if getattr(attrs1, f.name) != getattr(attrs2, f.name)]
        assert changed == [attribute]
    again = fine_grained_pairs(3, image_size=16, seed=1)
    assert [(a, s1[0], s2[0]) for a, s1, s2 in pairs] == [(a, s1[0], s2[0]) for a, s1, s2 in again]


@pytest.mark.parametrize("family", ["siglip", "open_clip"])
def test_fine_grained_scores_per_attribute(tiny, family):
    result = evaluate_fine_grained(load_tower(tiny[family]), fine_grained_pairs(2, image_size=32), batch_size=7)
    assert list(result.scores) == [*ATTRIBUTE_VALUES, "average"]
    assert result.scores["average"] == pytest.approx(sum(list(result.scores.values())[:-1]) / len(ATTRIBUTE_VALUES))
    assert len(result.predictions) == 12 and result.predictions[0]["statement1"] != result.predictions[0]["statement2"]
