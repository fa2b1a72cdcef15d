"""Reading shards and image folders: distinct splits, determinism, decoding, corrupt-image skipping."""

import io
import logging
import os
import tarfile

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from dcr_mllm.data.images import (
    ImageFolder,
    ImageTextShards,
    collate_image_text,
    collate_skip_none,
    load_rgb,
    to_tensor_square,
)
from dcr_mllm.data.synthetic import write_image_folder, write_synthetic_shards
from dcr_mllm.errors import DcrError

NUM_SAMPLES = 40
ALL_KEYS = {f"{i:09d}" for i in range(NUM_SAMPLES)}


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    write_synthetic_shards(out, num_samples=NUM_SAMPLES, samples_per_shard=5, image_size=32)  # 8 shards
    return out


def _keys(dataset, num_workers=0, batch_size=4):
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_image_text)
    return [key for batch in loader for key in batch["key"]]


def _add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _jpeg(colour, size=(40, 20)):
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_ranks_and_workers_read_distinct_complete_splits(shard_dir):
    per_rank = [
        _keys(ImageTextShards(shard_dir, 32, rank=rank, world_size=2, seed=5), num_workers=2) for rank in range(2)
    ]
    for keys in per_rank:
        assert len(keys) == len(set(keys)) == NUM_SAMPLES // 2
    assert set(per_rank[0]).isdisjoint(per_rank[1])
    assert set(per_rank[0]) | set(per_rank[1]) == ALL_KEYS
    # The worker processes reproduce the same sequence for the same seed and epoch.
    assert _keys(ImageTextShards(shard_dir, 32, rank=1, world_size=2, seed=5), num_workers=2) == per_rank[1]


def test_order_follows_seed_and_epoch(shard_dir):
    dataset = ImageTextShards(shard_dir, 32, seed=1)
    first = _keys(dataset)
    assert first == _keys(ImageTextShards(shard_dir, 32, seed=1))
    assert sorted(first) == sorted(ALL_KEYS)
    dataset.set_epoch(1)
    next_epoch = _keys(dataset)
    assert next_epoch != first and sorted(next_epoch) == sorted(first)
    assert _keys(ImageTextShards(shard_dir, 32, seed=2)) != first
    assert _keys(ImageTextShards(shard_dir, 32, shuffle=False)) == sorted(ALL_KEYS)


def test_samples_are_unnormalised_square_tensors(shard_dir):
    dataset = ImageTextShards(os.path.join(shard_dir, "{00000..00002}.tar"), 24, shuffle=False)
    assert len(dataset.shards) == 3
    sample = next(iter(dataset))
    with tarfile.open(shard_dir / "00000.tar") as tar:
        jpeg = tar.extractfile("000000000.jpg").read()
        text = tar.extractfile("000000000.txt").read().decode()
    assert sample["key"] == "000000000" and sample["caption"] == text and sample["skipped"] == 0
    image = sample["image"]
    assert image.shape == (3, 24, 24) and image.dtype == torch.float32
    assert image.min() >= 0 and image.max() <= 1 and image.max() > 0.5
    assert torch.equal(image, to_tensor_square(load_rgb(jpeg), 24))

    batch = collate_image_text([sample, sample])
    assert batch["image"].shape == (2, 3, 24, 24) and batch["key"] == [sample["key"]] * 2


def test_to_tensor_square_resizes_shorter_side_and_crops_centre():
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    image.paste((0, 0, 255), (20, 0, 40, 20))  # left half red, right half blue
    tensor = to_tensor_square(image, 10)  # -> 20x10, centre crop keeps columns 5..14
    assert tensor.shape == (3, 10, 10)
    assert tensor[:, :, 1].mean(dim=1).tolist() == pytest.approx([1, 0, 0], abs=0.02)
    assert tensor[:, :, 8].mean(dim=1).tolist() == pytest.approx([0, 0, 1], abs=0.02)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_corrupt_images_are_skipped_and_counted(tmp_path, caplog, num_workers):
    # Two shards of 4 samples: one undecodable, one truncated, one with no image; the rest are good.
    good = _jpeg((0, 200, 0))
    with tarfile.open(tmp_path / "00000.tar", "w") as tar:
        _add(tar, "a0.jpg", good)
        _add(tar, "a0.txt", b"first")
        _add(tar, "a1.jpg", os.urandom(300))
        _add(tar, "a1.txt", b"noise")
        _add(tar, "a2.png", good)  # a JPEG misnamed .png still decodes
        _add(tar, "a3.jpg", good[: len(good) // 2])
    with tarfile.open(tmp_path / "00001.tar", "w") as tar:
        _add(tar, "b0.txt", b"caption without an image")
        _add(tar, "b1.jpg", good)
        _add(tar, "b2.jpg", good)
        _add(tar, "b3.jpg", good)

    dataset = ImageTextShards(tmp_path, 16, seed=0)
    loader = DataLoader(dataset, batch_size=2, num_workers=num_workers, collate_fn=collate_image_text)
    with caplog.at_level(logging.WARNING, logger="dcr_mllm.data"):
        batches = list(loader)
    keys = sorted(key for batch in batches for key in batch["key"])
    assert keys == ["a0", "a2", "b1", "b2", "b3"]
    assert sum(batch["skipped"] for batch in batches) == 3
    assert all(isinstance(batch["skipped"], int) for batch in batches)
    captions = {k: c for batch in batches for k, c in zip(batch["key"], batch["caption"])}
    assert captions["a0"] == "first" and captions["b1"] == ""
    if num_workers == 0:  # worker processes log on their own
        messages = [r.getMessage() for r in caplog.records]
        assert any("a1" in m and "00000.tar" in m for m in messages)
        assert any("b0" in m and "no image" in m for m in messages)


def test_truncated_shard_keeps_its_readable_samples(shard_dir, tmp_path, caplog):
    data = (shard_dir / "00000.tar").read_bytes()
    (tmp_path / "00000.tar").write_bytes(data[: len(data) // 2])
    with caplog.at_level(logging.WARNING, logger="dcr_mllm.data"):
        keys = _keys(ImageTextShards(tmp_path, 32, shuffle=False))
    assert 0 < len(keys) < 5 and keys == sorted(ALL_KEYS)[: len(keys)]
    assert any("unreadable" in r.getMessage() for r in caplog.records)


def test_too_few_shards_is_an_error(shard_dir, tmp_path):
    with pytest.raises(DcrError, match="fewer than 2 ranks x 1 workers"):
        ImageTextShards(shard_dir / "00000.tar", 32, rank=0, world_size=2)
    three = [shard_dir / f"0000{i}.tar" for i in range(3)]
    dataset = ImageTextShards(three, 32, rank=1, world_size=2)
    with pytest.raises(DcrError, match="3 shards are fewer than 2 ranks x 2 workers"):
        dataset.check_workers(2)
    loader = iter(DataLoader(dataset, num_workers=2, collate_fn=collate_image_text))
    with pytest.raises(DcrError, match="3 shards are fewer than 2 ranks x 2 workers") as caught:
        next(loader)  # the worker that would get no shard raises too
    # Free the loader now: left to the garbage collector, its workers take seconds to stop.
    caught.value.__traceback__ = None
    del caught, loader


def test_missing_paths_are_errors(shard_dir, tmp_path):
    with pytest.raises(DcrError, match="no .tar shards in"):
        ImageTextShards(tmp_path, 32)
    missing = tmp_path / "nowhere" / "00000.tar"
    with pytest.raises(DcrError, match=str(missing)):
        ImageTextShards(str(missing), 32)
    with pytest.raises(DcrError, match="00008.tar"):
        ImageTextShards(os.path.join(shard_dir, "{00007..00009}.tar"), 32)
    with pytest.raises(DcrError, match="does not exist"):
        ImageFolder(tmp_path / "nowhere", 32)
    with pytest.raises(DcrError, match="no images"):
        ImageFolder(tmp_path, 32)
    with pytest.raises(DcrError, match="cannot decode image"):
        load_rgb(b"not an image")


@pytest.mark.parametrize("num_workers", [0, 2])
def test_image_folder_labels_captions_and_corrupt_items(tmp_path, num_workers):
    classes = write_image_folder(tmp_path, num_per_class=2, image_size=20, seed=0, by="color")
    (tmp_path / "red" / "broken.jpg").write_bytes(os.urandom(200))
    Image.new("RGB", (30, 50)).save(tmp_path / "loose.bmp")  # directly under root: no class

    dataset = ImageFolder(tmp_path, 16)
    assert dataset.classes == classes == sorted(classes)
    assert len(dataset) == 2 * len(classes) + 2
    assert dataset[0]["key"] == "blue/00000" and dataset[0]["label"] == classes.index("blue")

    loader = DataLoader(dataset, batch_size=4, num_workers=num_workers, collate_fn=collate_skip_none)
    batches = list(loader)
    assert sum(batch["skipped"] for batch in batches) == 1
    items = [
        (key, label, caption)
        for batch in batches
        for key, label, caption in zip(batch["key"], batch["label"].tolist(), batch["caption"])
    ]
    assert len(items) == 2 * len(classes) + 1
    for key, label, caption in items:
        if key == "loose":
            assert (label, caption) == (-1, "")
        else:
            assert classes[label] == key.split("/")[0] and f" {classes[label]} " in caption
    assert all(batch["image"].shape[1:] == (3, 16, 16) for batch in batches)
