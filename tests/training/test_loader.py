"""Resuming the data stream: a resumed loader passes over what was read without decoding it and
yields exactly the batches an uninterrupted one yields, across workers, epochs and corrupt samples."""

import itertools
import tarfile
from io import BytesIO
from pathlib import Path

import pytest
import torch
from PIL import Image

from dcr_mllm.data import ImageTextShards, collate_image_text, write_synthetic_shards
from dcr_mllm.errors import DcrError
from dcr_mllm.llava.build import build_processor
from dcr_mllm.llava.train.batches import GroupedBatches
from dcr_mllm.llava.train.data import ConversationData
from dcr_mllm.training import ResumableBatches


class CountedShards(ImageTextShards):
    """Shards that log every decoded epoch:key to a file (DataLoader workers are separate processes)."""

    def __init__(self, log: Path, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.log = log

    def _decode(self, shard, key, files):
        with open(self.log, "a") as f:
            f.write(f"{self.epoch}:{key}\n")
        return super()._decode(shard, key, files)


class CountedConversations(ConversationData):
    def __init__(self, log: Path, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.log = log

    def __getitem__(self, index):
        with open(self.log, "a") as f:
            f.write(f"{index}\n")
        return super().__getitem__(index)


def take(batches: ResumableBatches, count: int) -> tuple[list[dict], list[dict]]:
    """``count`` batches and the loader's state after each of them."""
    out, states = [], []
    for batch in itertools.islice(batches, count):
        out.append(batch)
        states.append(batches.state_dict())
    return out, states


def read_log(log: Path) -> list[str]:
    lines = log.read_text().split() if log.is_file() else []
    log.unlink(missing_ok=True)
    return lines


def add_corrupt_sample(shard: Path) -> None:
    with tarfile.open(shard, "a") as tar:
        info = tarfile.TarInfo("zz_corrupt.jpg")
        info.size = 11
        tar.addfile(info, BytesIO(b"not a jpeg!"))


def check_resume(make, batch_size, collate, workers, whole, states, keys_of, decoded_before, same):
    """Resume at several positions (inside the first epoch, at its end, inside the second) and
    compare with the uninterrupted stream ``whole`` (``states``: the loader's state after each
    batch); ``decoded_before(k, epoch_length)`` checks what a resume at batch k decoded up to the
    end of that epoch."""
    epoch_length = next(i for i, s in enumerate(states) if s["epoch"] == 0 and states[i + 1]["epoch"] == 1) + 1
    assert 4 < epoch_length < 20
    for k in (1, 3, epoch_length - 1, epoch_length, epoch_length + 3):
        resumed = ResumableBatches(make(), batch_size, collate, workers)
        resumed.load_state_dict(states[k - 1])
        end = epoch_length if k < epoch_length else 2 * epoch_length
        rest, _ = take(resumed, end - k)
        decoded_before(k, epoch_length)
        for a, b in zip(rest, whole[k:end], strict=True):
            same(a, b)
        assert keys_of(rest) == keys_of(whole[k:end])


@pytest.mark.parametrize("workers", [0, 2])
def test_shards_resume_without_decoding_earlier_batches(tmp_path, workers):
    write_synthetic_shards(tmp_path / "shards", 30, samples_per_shard=4, image_size=16, seed=0)
    add_corrupt_sample(tmp_path / "shards" / "00001.tar")
    log = tmp_path / "decoded.txt"

    def make():
        return CountedShards(log, tmp_path / "shards", 16, seed=3, shuffle_buffer=3)

    def keys_of(batches):
        return [batch["key"] for batch in batches]

    def same(a, b):
        assert a["key"] == b["key"] and a["skipped"] == b["skipped"] and torch.equal(a["image"], b["image"])

    whole, states = take(ResumableBatches(make(), 3, collate_image_text, workers), 40)
    assert "0:zz_corrupt" in read_log(log) and any(batch["skipped"] for batch in whole), "the corrupt sample is met"

    def decoded_before(k, epoch_length):
        decoded = set(read_log(log))
        earlier = {f"{states[i]['epoch']}:{key}" for i in range(k) for key in whole[i]["key"]}
        assert decoded and not decoded & earlier, f"resuming at batch {k} decoded images of earlier batches"

    check_resume(make, 3, collate_image_text, workers, whole, states, keys_of, decoded_before, same)


@pytest.fixture(scope="module")
def processor(tiny):
    return build_processor(tiny["clip"], tiny["llama"])


@pytest.mark.parametrize("workers", [0, 2])
def test_llava_plan_resumes_without_loading_earlier_batches(tmp_path, processor, workers):
    for i in range(24):
        Image.new("RGB", (20 + i, 24), (10 * i, 0, 0)).save(tmp_path / f"{i}.png")
    image_turns = [{"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": "Red."}]
    text_turns = [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello there."}]
    records = [{"id": str(i), "image": f"{i}.png", "conversations": image_turns} for i in range(24)]
    records += [{"id": f"t{i}", "conversations": text_turns} for i in range(8)]
    log = tmp_path / "loaded.txt"

    def make():
        data = CountedConversations(log, records, tmp_path, processor, "vicuna_v1", image_seq_length=16, max_length=512)
        return GroupedBatches(data, batch_size=2, seed=1, pad_token_id=processor.tokenizer.pad_token_id)

    def keys_of(batches):
        return [batch["input_ids"].tolist() for batch in batches]

    def same(a, b):
        assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])
        assert (a["pixel_values"] is None) == (b["pixel_values"] is None)
        assert a["pixel_values"] is None or torch.equal(a["pixel_values"], b["pixel_values"])

    whole, states = take(ResumableBatches(make(), None, None, workers), 40)
    read_log(log)

    def decoded_before(k, epoch_length):
        loaded = read_log(log)
        remaining = epoch_length - (k % epoch_length if k != epoch_length else 0)
        assert len(loaded) == 2 * remaining, (
            f"resuming at batch {k} loaded {len(loaded)} records, not only the remaining {remaining} batches"
        )

    check_resume(make, None, None, workers, whole, states, keys_of, decoded_before, same)


def test_resuming_with_another_worker_count_is_refused(tmp_path):
    write_synthetic_shards(tmp_path, 8, samples_per_shard=4, image_size=16)
    two = ResumableBatches(ImageTextShards(tmp_path, 16), 2, collate_image_text, num_workers=2)
    one = ResumableBatches(ImageTextShards(tmp_path, 16), 2, collate_image_text, num_workers=0)
    with pytest.raises(DcrError, match="resume with num_workers=2"):
        one.load_state_dict(two.state_dict())
