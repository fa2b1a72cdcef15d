"""The synthetic scene generator: deterministic, consistent captions, visible orientation."""

import dataclasses
import io
import json
import random
import tarfile

import pytest
from PIL import Image, ImageChops, ImageOps, ImageStat

from dcr_mllm.data.synthetic import (
    ATTRIBUTE_VALUES,
    SceneAttributes,
    caption,
    make_pair,
    render_scene,
    sample_attributes,
    write_image_folder,
    write_synthetic_shards,
)
from dcr_mllm.errors import DcrError


def _mean_abs_diff(a: Image.Image, b: Image.Image) -> float:
    return sum(ImageStat.Stat(ImageChops.difference(a, b)).mean) / 3


def test_shards_are_deterministic(tmp_path):
    first = write_synthetic_shards(tmp_path / "a", num_samples=10, samples_per_shard=4, seed=3)
    again = write_synthetic_shards(tmp_path / "b", num_samples=10, samples_per_shard=4, seed=3)
    other = write_synthetic_shards(tmp_path / "c", num_samples=10, samples_per_shard=4, seed=4)
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in again]
    assert first[0].read_bytes() != other[0].read_bytes()
    # Rewriting into the same directory reproduces the same shards.
    assert write_synthetic_shards(tmp_path / "a", num_samples=10, samples_per_shard=4, seed=3) == first
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in again]


def test_shard_layout_keys_and_captions(tmp_path):
    paths = write_synthetic_shards(tmp_path, num_samples=10, samples_per_shard=4, image_size=32)
    assert [p.name for p in paths] == ["00000.tar", "00001.tar", "00002.tar"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00000.tar", "00001.tar", "00002.tar"]

    keys = []
    for path in paths:
        with tarfile.open(path) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        shard_keys = sorted({name.split(".")[0] for name in members})
        assert set(members) == {f"{k}.{ext}" for k in shard_keys for ext in ("jpg", "txt", "json")}
        for key in shard_keys:
            meta = json.loads(members[f"{key}.json"])
            assert meta.pop("key") == key
            attrs = SceneAttributes(**meta)
            assert members[f"{key}.txt"].decode() == caption(attrs)
            image = Image.open(io.BytesIO(members[f"{key}.jpg"]))
            assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (32, 32))
        keys += shard_keys
    assert keys == [f"{i:09d}" for i in range(10)]


def test_stale_shards_are_refused(tmp_path):
    write_synthetic_shards(tmp_path, num_samples=8, samples_per_shard=4)
    with pytest.raises(DcrError, match="00001.tar"):
        write_synthetic_shards(tmp_path, num_samples=4, samples_per_shard=4)


def test_caption_names_every_attribute():
    attrs = SceneAttributes("triangle", "red", 2, "right", "left", "gray")
    assert caption(attrs) == "two red triangles pointing left on the right side of a gray background"
    one = dataclasses.replace(attrs, count=1, shape="star", position="center")
    assert caption(one) == "one red star pointing left in the center of a gray background"


def test_unknown_attribute_value_is_an_error():
    with pytest.raises(DcrError, match="hexagon"):
        SceneAttributes("hexagon", "red", 1, "left", "up", "gray")


def test_sampling_and_rendering_are_deterministic():
    attrs = [sample_attributes(random.Random(7)) for _ in range(2)]
    assert attrs[0] == attrs[1]
    image = render_scene(attrs[0], 48)
    assert (image.mode, image.size) == ("RGB", (48, 48))
    assert image.tobytes() == render_scene(attrs[0], 48).tobytes()


@pytest.mark.parametrize("shape", ATTRIBUTE_VALUES["shape"])
def test_orientation_is_visible_for_every_shape(shape):
    up = render_scene(SceneAttributes(shape, "white", 1, "center", "up", "slate"), 64)
    down = render_scene(SceneAttributes(shape, "white", 1, "center", "down", "slate"), 64)
    flipped = ImageOps.flip(up)
    assert _mean_abs_diff(up, flipped) > 0.5  # a vertical flip changes the picture...
    assert _mean_abs_diff(down, flipped) < 0.05  # ...into the scene that points the other way


@pytest.mark.parametrize("attribute", list(ATTRIBUTE_VALUES))
def test_make_pair_differs_in_exactly_one_attribute(attribute):
    (a, image_a), (b, image_b) = make_pair(random.Random(1), 32, attribute)
    changed = [f.name for f in dataclasses.fields(a) if getattr(a, f.name) != getattr(b, f.name)]
    assert changed == [attribute]
    assert image_a.size == image_b.size == (32, 32)
    assert image_a.tobytes() != image_b.tobytes()


def test_image_folder_layout(tmp_path):
    classes = write_image_folder(tmp_path, num_per_class=2, image_size=24, seed=0, by="shape")
    assert classes == sorted(ATTRIBUTE_VALUES["shape"])
    assert sorted(p.name for p in tmp_path.iterdir()) == classes
    for name in classes:
        files = sorted(p.name for p in (tmp_path / name).iterdir())
        assert files == ["00000.png", "00000.txt", "00001.png", "00001.txt"]
        assert Image.open(tmp_path / name / "00001.png").size == (24, 24)
        assert f" {name}" in (tmp_path / name / "00000.txt").read_text()

    counts = write_image_folder(tmp_path / "counts", num_per_class=1, image_size=24, seed=0, by="count")
    assert counts == ["1", "2", "3", "4"]
    assert (tmp_path / "counts" / "3" / "00000.txt").read_text().startswith("three ")
    with pytest.raises(DcrError, match="by 'size'"):
        write_image_folder(tmp_path / "bad", num_per_class=1, image_size=24, seed=0, by="size")
