"""LLaVA conversation data: records, the two LLaVA-1.5 prompt templates, labels, batches.

Records are those of ``blip_laion_cc_sbu_558k.json`` and ``llava_v1_5_mix665k.json``::

    {"id": ..., "image": "relative/path.jpg" (optional),
     "conversations": [{"from": "human", "value": "<image>\\nQuestion"}, {"from": "gpt", "value": "Answer"}, ...]}

Templates produce the same strings as LLaVA-1.5:

* ``plain`` (pretraining): ``<image>`` + the first answer + ``"\\n"``;
* ``vicuna_v1`` (instruction tuning):
  ``"{system} USER: <image>\\n{q1} ASSISTANT: {a1}</s>USER: {q2} ASSISTANT: {a2}</s>"``.

A prompt is tokenized piece by piece, so the label boundaries are exact: only the assistant
answers (with their ``</s>``) carry labels. ``<image>`` is expanded to the tower's number of
image tokens, as llava-hf expects. Batches are grouped by modality across all ranks, so every
rank runs the vision tower in the same steps (ZeRO-3 gathers its weights collectively).
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from dcr_mllm.data.images import load_rgb
from dcr_mllm.errors import DcrError
from dcr_mllm.llava.build import IMAGE_TOKEN, VICUNA_SYSTEM

logger = logging.getLogger("dcr_mllm.llava")
IGNORE_INDEX = -100
TEMPLATES = ("plain", "vicuna_v1")


def read_records(path: str | Path) -> list[dict]:
    """Load and check a conversation JSON; a malformed record names its index and field."""
    path = Path(path)
    if not path.is_file():
        raise DcrError(f"conversation file {path} does not exist; point the data json at a LLaVA conversation file")
    try:
        records = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DcrError(f"{path} is not valid JSON ({err})") from None
    if not isinstance(records, list):
        raise DcrError(f"{path} must hold a JSON list of records")
    for index, record in enumerate(records):
        _check_record(path, index, record)
    return records


def _check_record(path: Path, index: int, record) -> None:
    where = f"{path} record {index}"
    if not isinstance(record, dict):
        raise DcrError(f"{where} is not an object")
    if "image" in record and not isinstance(record["image"], str):
        raise DcrError(f"{where}: field 'image' must be a path string")
    turns = record.get("conversations")
    if not isinstance(turns, list) or len(turns) < 2 or len(turns) % 2:
        raise DcrError(f"{where}: field 'conversations' must be a list of human/gpt turn pairs")
    for turn_index, turn in enumerate(turns):
        expected = "human" if turn_index % 2 == 0 else "gpt"
        if not isinstance(turn, dict) or turn.get("from") != expected or not isinstance(turn.get("value"), str):
            raise DcrError(f"{where}: field 'conversations[{turn_index}]' must be {{\"from\": \"{expected}\", \"value\": str}}")
    has_token = any(IMAGE_TOKEN in turn["value"] for turn in turns)
    if ("image" in record) != has_token:
        raise DcrError(f"{where}: field 'image' and an '{IMAGE_TOKEN}' in the first human turn go together")


def prompt_segments(record: dict, template: str) -> list[tuple[str, bool]]:
    """The prompt as (text, is_label) pieces, in order."""
    turns = record["conversations"]
    if template == "plain":
        return [(IMAGE_TOKEN, False), (turns[1]["value"] + "\n", True)]
    if template != "vicuna_v1":
        raise DcrError(f"unknown template {template!r}; use one of {', '.join(TEMPLATES)}")
    segments = []
    for i in range(0, len(turns), 2):
        question = turns[i]["value"]
        if IMAGE_TOKEN in question:  # LLaVA-1.5 moves the image to the front of its turn
            question = IMAGE_TOKEN + "\n" + question.replace(IMAGE_TOKEN, "").strip()
        prefix = VICUNA_SYSTEM + " " if i == 0 else ""
        # the space before an answer goes with the answer, as a joint tokenization would put it
        # (Llama's "▁Yes"), and as generation after the template's "ASSISTANT:" produces it
        segments.append((f"{prefix}USER: {question} ASSISTANT:", False))
        segments.append((" " + turns[i + 1]["value"] + "</s>", True))
    return segments


def prompt_text(record: dict, template: str) -> str:
    return "".join(text for text, _ in prompt_segments(record, template))


def tokenize(record: dict, template: str, tokenizer, image_seq_length: int, max_length: int) -> tuple[list[int], list[int]] | None:
    """(input_ids, labels) with <s> first and <image> expanded; None when the image tokens do not fit."""
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    input_ids, labels = [tokenizer.bos_token_id], [IGNORE_INDEX]
    for text, is_label in prompt_segments(record, template):
        ids = tokenizer(text, add_special_tokens=False).input_ids
        expanded = []
        for token in ids:
            expanded.extend([image_id] * image_seq_length if token == image_id else [token])
        input_ids.extend(expanded)
        labels.extend(expanded if is_label else [IGNORE_INDEX] * len(expanded))
    if image_id in input_ids[max_length:]:
        return None
    return input_ids[:max_length], labels[:max_length]


def pad_to_square(image: Image.Image, mean: tuple[float, ...]) -> Image.Image:
    """LLaVA's ``pad`` aspect ratio: centre the image on a square of the processor's mean colour."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    square = Image.new("RGB", (side, side), tuple(int(255 * m) for m in mean))
    square.paste(image, ((side - width) // 2, (side - height) // 2))
    return square


@dataclass
class Sample:
    input_ids: list[int]
    labels: list[int]
    pixel_values: torch.Tensor | None
    skipped: int = 0


class ConversationData:
    """Records with their images, tokenized on access. Missing images are dropped up front."""

    def __init__(self, records: list[dict], image_folder: str | Path, processor, template: str,
                 image_seq_length: int, max_length: int):
        self.image_folder, self.processor, self.template = Path(image_folder), processor, template
        self.image_seq_length, self.max_length = image_seq_length, max_length
        self.records = []
        self.missing = 0
        for record in records:
            if "image" in record and not (self.image_folder / record["image"]).is_file():
                self.missing += 1
                logger.warning("record %s: image %s is missing; skipped", record.get("id"), self.image_folder / record["image"])
                continue
            self.records.append(record)
        if not self.records:
            raise DcrError(f"no usable record: every image is missing under {self.image_folder}; fix the image folder")

    def __len__(self) -> int:
        return len(self.records)

    def has_image(self, index: int) -> bool:
        return "image" in self.records[index]

    def length(self, index: int) -> int:
        """Approximate length in words, for grouping (cheap: no tokenization)."""
        words = sum(len(turn["value"].split()) for turn in self.records[index]["conversations"])
        return words + (self.image_seq_length if self.has_image(index) else 0)

    def __getitem__(self, index: int) -> Sample | None:
        record = self.records[index]
        tokens = tokenize(record, self.template, self.processor.tokenizer, self.image_seq_length, self.max_length)
        if tokens is None:
            logger.warning("record %s does not fit model_max_length %d with its image; skipped", record.get("id"), self.max_length)
            return None
        input_ids, labels = tokens
        if "image" not in record:
            return Sample(input_ids, labels, None)
        image_processor = self.processor.image_processor
        try:
            image = load_rgb(self.image_folder / record["image"])
            skipped = 0
        except DcrError:  # corrupt: keep the shapes every rank expects, learn nothing from it
            logger.warning("record %s: image %s is corrupt; skipped", record.get("id"), record["image"])
            size = image_processor.crop_size if getattr(image_processor, "crop_size", None) else image_processor.size
            image = Image.new("RGB", (size.get("width", 32), size.get("height", 32)))
            labels = [IGNORE_INDEX] * len(labels)
            skipped = 1
        image = pad_to_square(image, tuple(image_processor.image_mean))
        pixel_values = image_processor(image, return_tensors="pt").pixel_values[0]
        return Sample(input_ids, labels, pixel_values, skipped)


class GroupedBatches(IterableDataset):
    """Per-rank micro-batches of one modality, the same plan on every rank, resumable by epoch.

    Each epoch, images and text-only records are shuffled (seed, epoch) and cut into global
    batches of ``batch_size * world_size`` of one modality; with ``group_by_length`` each global
    batch holds records of similar length. Rank r takes every world_size-th record of it.
    """

    def __init__(self, data: ConversationData, batch_size: int, rank: int = 0, world_size: int = 1,
                 seed: int = 0, pad_token_id: int = 0, group_by_length: bool = True):
        self.data, self.batch_size, self.rank, self.world_size = data, batch_size, rank, world_size
        self.seed, self.pad_token_id, self.group_by_length = seed, pad_token_id, group_by_length
        self.epoch = 0
        if self.steps_per_epoch() == 0:
            raise DcrError(f"{len(data)} records give no full global batch of {batch_size} x {world_size}; add data or lower micro_batch_size")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def plan(self) -> list[list[int]]:
        rng = random.Random(f"{self.seed}-{self.epoch}")
        size = self.batch_size * self.world_size
        batches = []
        for has_image in (True, False):
            group = [i for i in range(len(self.data)) if self.data.has_image(i) == has_image]
            rng.shuffle(group)
            if self.group_by_length:  # sort within mega-batches of 8 global batches, as LLaVA does
                mega = size * 8
                group = [i for start in range(0, len(group), mega)
                         for i in sorted(group[start:start + mega], key=self.data.length, reverse=True)]
            batches += [group[start:start + size] for start in range(0, len(group) - size + 1, size)]
        rng.shuffle(batches)
        return batches

    def steps_per_epoch(self) -> int:
        """Global batches per epoch (the same on every rank)."""
        size = self.batch_size * self.world_size
        images = sum(self.data.has_image(i) for i in range(len(self.data)))
        return images // size + (len(self.data) - images) // size

    def __iter__(self) -> Iterator[dict]:
        worker = get_worker_info()
        worker_id, num_workers = (worker.id, worker.num_workers) if worker else (0, 1)
        for batch in self.plan()[worker_id::num_workers]:
            yield self.collate([self.data[i] for i in batch[self.rank::self.world_size]])

    def collate(self, samples: list[Sample | None]) -> dict:
        kept = [s for s in samples if s is not None]
        skipped = len(samples) - len(kept) + sum(s.skipped for s in kept)
        if not kept:  # every rank must run this step; an empty micro-batch cannot
            raise DcrError("a whole micro-batch was too long for model_max_length; raise model_max_length")
        longest = max(len(s.input_ids) for s in kept)
        input_ids = torch.full((len(kept), longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(kept), longest), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(kept), longest), dtype=torch.long)
        for row, sample in enumerate(kept):
            n = len(sample.input_ids)
            input_ids[row, :n] = torch.tensor(sample.input_ids)
            labels[row, :n] = torch.tensor(sample.labels)
            attention_mask[row, :n] = 1
        images = [s.pixel_values for s in kept if s.pixel_values is not None]
        return {
            "input_ids": input_ids,
            "labels": labels,
            "attention_mask": attention_mask,
            "pixel_values": torch.stack(images) if images else None,
            "skipped": skipped,
        }
