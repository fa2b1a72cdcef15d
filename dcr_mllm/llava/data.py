"""LLaVA conversation data: records, the two LLaVA-1.5 prompt templates, labels, batches.

Records are those of ``blip_laion_cc_sbu_558k.json`` and ``llava_v1_5_mix665k.json``::

    {"id": ..., "image": "relative/path.jpg" (optional),
     "conversations": [{"from": "human", "value": "<image>\\nQuestion"}, {"from": "gpt", "value": "Answer"}, ...]}

Prompts, token ids and labels are LLaVA-1.5's (``preprocess_plain`` / ``preprocess_v1`` in LLaVA's
llava/train/train.py, with the strings of ``dcr_mllm.prompts``):

* ``plain`` (pretraining): ``<image>`` + the first answer + ``"\\n"``; labels on all but ``<image>``;
* ``vicuna_v1`` (instruction tuning):
  ``"{system} USER: <image>\\n{q1} ASSISTANT: {a1}</s>USER: {q2} ASSISTANT: {a2}</s>"``; labels on
  each answer (from the space after ``ASSISTANT:``) and its ``</s>``.

The prompt is tokenized as LLaVA's ``tokenizer_image_token`` does (split at ``<image>``, each piece
tokenized whole), and labels follow the answers' character spans, so they are exact. Each
``<image>`` is then expanded to the tower's number of image tokens, as llava-hf expects. A
conversation that opens with an answer loses that turn, as in LLaVA, and is counted. Batches
follow LLaVA's modality/length grouping (``llava/train/llava_trainer.py``).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from dcr_mllm.data.images import load_rgb
from dcr_mllm.data.position import ReadPosition
from dcr_mllm.errors import DcrError
from dcr_mllm.prompts import IMAGE_TOKEN, PLAIN_SEP, VICUNA_ROLES, VICUNA_SEP, VICUNA_SEP2, VICUNA_SYSTEM
from dcr_mllm.strict import read_json

logger = logging.getLogger("dcr_mllm.llava")
IGNORE_INDEX = -100
TEMPLATES = ("plain", "vicuna_v1")
ASPECTS = ("square", "pad")  # LLaVA's image_aspect_ratio: the tower's own preprocessing, or padded to a square first


def read_records(path: str | Path) -> list[dict]:
    """Load and check a conversation JSON; a malformed record names its index and field."""
    path = Path(path)
    if not path.is_file():
        raise DcrError(f"conversation file {path} does not exist; point the data json at a LLaVA conversation file")
    records = read_json(path)
    if not isinstance(records, list):
        raise DcrError(f"{path} must hold a JSON list of records")
    for index, record in enumerate(records):
        _check_record(path, index, record)
    return records


def check_images(records: list[dict], image_folder: Path, setting: str) -> None:
    """The first image the records name that is there decodes, and there is one: a wrong image
    folder fails before a model is built or an output written. Later missing or corrupt images are
    skipped and counted in training, as ``ConversationData`` does."""
    named = [record["image"] for record in records if "image" in record]
    first = next((image_folder / name for name in named if (image_folder / name).is_file()), None)
    if named and first is None:
        raise DcrError(
            f"none of the {len(named)} images the conversations name is under {image_folder} (the first: {named[0]}); "
            f"set {setting} to the folder their paths are relative to"
        )
    if first is not None:
        load_rgb(first)


def _check_record(path: Path, index: int, record) -> None:
    where = f"{path} record {index}"
    if not isinstance(record, dict):
        raise DcrError(f"{where} is not an object")
    if "image" in record and not isinstance(record["image"], str):
        raise DcrError(f"{where}: field 'image' must be a path string")
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise DcrError(f"{where}: field 'conversations' must be a list of human/gpt turn pairs")
    first = 1 if _opens_with_answer(turns) else 0
    if len(turns) - first < 2 or (len(turns) - first) % 2:
        raise DcrError(
            f"{where}: field 'conversations' must be a list of human/gpt turn pairs (an opening gpt turn is dropped)"
        )
    for turn_index, turn in enumerate(turns[first:], start=first):
        expected = "human" if (turn_index - first) % 2 == 0 else "gpt"
        if not isinstance(turn, dict) or turn.get("from") != expected or not isinstance(turn.get("value"), str):
            raise DcrError(
                f'{where}: field \'conversations[{turn_index}]\' must be {{"from": "{expected}", "value": str}}'
            )
    has_token = any(IMAGE_TOKEN in turn["value"] for turn in turns[first:])
    if ("image" in record) != has_token:
        raise DcrError(f"{where}: field 'image' and an '{IMAGE_TOKEN}' in the first human turn go together")


def _opens_with_answer(turns: list) -> bool:
    return isinstance(turns[0], dict) and turns[0].get("from") == "gpt"


def conversation(record: dict) -> list[dict]:
    """The turns LLaVA trains on: a leading answer is dropped (LLaVA's train.py:425-427)."""
    turns = record["conversations"]
    return turns[1:] if _opens_with_answer(turns) else turns


def _with_image_first(text: str) -> str:
    """LLaVA's ``preprocess_multimodal`` (train.py:318-321): the image moves to the front of its turn."""
    if IMAGE_TOKEN not in text:
        return text
    return (IMAGE_TOKEN + "\n" + text.replace(IMAGE_TOKEN, "").strip()).strip()


def prompt_segments(record: dict, template: str) -> list[tuple[str, bool]]:
    """The prompt as (text, is_label) pieces, in order."""
    turns = conversation(record)
    if template == "plain":
        return [(IMAGE_TOKEN, False), (turns[1]["value"] + PLAIN_SEP, True)]
    if template != "vicuna_v1":
        raise DcrError(f"unknown template {template!r}; use one of {', '.join(TEMPLATES)}")
    has_image = "image" in record
    user, assistant = VICUNA_ROLES
    segments = [(VICUNA_SYSTEM + VICUNA_SEP, False)]
    for i in range(0, len(turns), 2):
        question, answer = (_with_image_first(t["value"]) if has_image else t["value"] for t in turns[i : i + 2])
        # the space of "ASSISTANT: " goes with the answer: LLaVA's labels start at the token that
        # holds it (its instruction length counts "ASSISTANT:" and drops the trailing "▁", train.py:454-481)
        segments.append((f"{user}: {question}{VICUNA_SEP}{assistant}:", False))
        segments.append((f" {answer}{VICUNA_SEP2}", True))
    return segments


def prompt_text(record: dict, template: str) -> str:
    return "".join(text for text, _ in prompt_segments(record, template))


def tokenize(
    record: dict, template: str, tokenizer, image_seq_length: int, max_length: int
) -> tuple[list[int], list[int]] | None:
    """(input_ids, labels): <s>, then each piece between images tokenized whole (LLaVA's
    ``tokenizer_image_token``, mm_utils.py:185-204), <image> expanded; None when an image would be cut."""
    segments = prompt_segments(record, template)
    prompt = "".join(text for text, _ in segments)
    spans, position = [], 0
    for text, is_label in segments:
        if is_label:
            spans.append((position, position + len(text)))
        position += len(text)
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    input_ids = [] if tokenizer.bos_token_id is None else [tokenizer.bos_token_id]
    labels = [IGNORE_INDEX] * len(input_ids)
    start = 0
    for index, piece in enumerate(prompt.split(IMAGE_TOKEN)):
        if index:
            input_ids += [image_id] * image_seq_length
            labels += [IGNORE_INDEX] * image_seq_length
            start += len(IMAGE_TOKEN)
        encoded = tokenizer(piece, add_special_tokens=False, return_offsets_mapping=True)
        for token, (begin, _) in zip(encoded.input_ids, encoded.offset_mapping):
            input_ids.append(token)
            labels.append(token if any(a <= start + begin < b for a, b in spans) else IGNORE_INDEX)
        start += len(piece)
    if image_id in input_ids[max_length:]:
        return None
    return input_ids[:max_length], labels[:max_length]


@dataclass
class Sample:
    input_ids: list[int]
    labels: list[int]
    pixel_values: torch.Tensor | None
    skipped: int = 0


class ConversationData:
    """Records with their images, tokenized on access. Missing images are dropped up front.

    Images go through the processor's image processor (a ``LlavaImageProcessor``, the object a saved
    model carries), with LLaVA's aspect: ``pad`` pads to a square of the mean colour first, ``square``
    does not.
    """

    def __init__(
        self,
        records: list[dict],
        image_folder: str | Path,
        processor,
        template: str,
        image_seq_length: int,
        max_length: int,
        aspect: str = "pad",
    ):
        if aspect not in ASPECTS:
            raise DcrError(f"unknown image aspect {aspect!r}; use one of {', '.join(ASPECTS)}")
        self.image_folder, self.processor, self.template, self.aspect = Path(image_folder), processor, template, aspect
        self.image_seq_length, self.max_length = image_seq_length, max_length
        self.records = []
        self.missing = 0
        self.dropped_turns = 0  # leading answers dropped, as LLaVA drops them
        for record in records:
            if "image" in record and not (self.image_folder / record["image"]).is_file():
                self.missing += 1
                logger.warning(
                    "record %s: image %s is missing; skipped", record.get("id"), self.image_folder / record["image"]
                )
                continue
            if _opens_with_answer(record["conversations"]):
                self.dropped_turns += 1
            self.records.append(record)
        if self.dropped_turns:
            logger.warning(
                "%d conversations open with an answer; that turn is dropped, as LLaVA does", self.dropped_turns
            )
        if not self.records:
            raise DcrError(f"no usable record: every image is missing under {self.image_folder}; fix the image folder")

    def __len__(self) -> int:
        return len(self.records)

    def has_image(self, index: int) -> bool:
        return "image" in self.records[index]

    def length(self, index: int) -> int:
        """Words in the record, what LLaVA groups by (its ``modality_lengths``, train.py:684-690)."""
        return sum(len(turn["value"].split()) for turn in self.records[index]["conversations"])

    def pixels(self, image: Image.Image) -> torch.Tensor:
        """The tensor the model sees for ``image``: the saved model's processor, this stage's aspect."""
        return self.processor.image_processor(image, do_pad=self.aspect == "pad", return_tensors="pt").pixel_values[0]

    def __getitem__(self, index: int) -> Sample | None:
        record = self.records[index]
        tokens = tokenize(record, self.template, self.processor.tokenizer, self.image_seq_length, self.max_length)
        if tokens is None:
            logger.warning(
                "record %s does not fit model_max_length %d with its image; skipped", record.get("id"), self.max_length
            )
            return None
        input_ids, labels = tokens
        if "image" not in record:
            return Sample(input_ids, labels, None)
        try:
            image = load_rgb(self.image_folder / record["image"])
            skipped = 0
        except DcrError:  # corrupt: keep the shapes every rank expects, learn nothing from it
            logger.warning("record %s: image %s is corrupt; skipped", record.get("id"), record["image"])
            size = self.processor.image_processor.crop_size
            image = Image.new("RGB", (size.width, size.height))
            labels = [IGNORE_INDEX] * len(labels)
            skipped = 1
        return Sample(input_ids, labels, self.pixels(image), skipped)


def split_to_even_chunks(indices: list[int], lengths: list[int], num_chunks: int) -> list[list[int]]:
    """LLaVA's ``split_to_even_chunks`` (llava/train/llava_trainer.py:38-57) for full megabatches:
    each index, longest first, joins the chunk with the least total length that still has room."""
    per_chunk = len(indices) // num_chunks
    chunks = [[] for _ in range(num_chunks)]
    totals = [0.0] * num_chunks
    for index in indices:
        shortest = totals.index(min(totals))
        chunks[shortest].append(index)
        totals[shortest] += lengths[index]
        if len(chunks[shortest]) == per_chunk:
            totals[shortest] = float("inf")
    return chunks


def epoch_steps(images: int, texts: int, batch_size: int, world_size: int, grad_accum: int) -> int:
    """Micro-batch steps per epoch of ``GroupedBatches`` over ``images`` records with an image and
    ``texts`` without: whole global batches of each modality (the same on every rank)."""
    megabatch = batch_size * world_size * grad_accum
    return (images // megabatch + texts // megabatch) * grad_accum


class GroupedBatches(IterableDataset):
    """Per-rank micro-batches, planned as LLaVA's ``LengthGroupedSampler`` with
    ``group_by_modality_length`` (llava/train/llava_trainer.py:60-96), the same plan on every rank.

    Each epoch, the records with images and the text-only ones are each shuffled and cut into
    megabatches of one global batch (``batch_size * world_size * grad_accum``). With
    ``group_by_length``, a megabatch is sorted longest first and split into its micro-batches so
    that their total lengths are balanced; the megabatches are then shuffled. Micro-batch ``c`` of
    a megabatch goes to rank ``c % world_size`` at accumulation step ``c // world_size``, as
    accelerate shards LLaVA's sampler. Where LLaVA ends an epoch with one mixed batch of the two
    modalities' remainders, this plan keeps those remainders only if they are whole global batches:
    every rank must run the vision tower in the same steps (ZeRO-3 gathers its weights collectively).
    Without ``group_by_length`` the megabatches are split in drawn order (LLaVA samples at random).
    """

    def __init__(
        self,
        data: ConversationData,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        pad_token_id: int = 0,
        group_by_length: bool = True,
        grad_accum: int = 1,
    ):
        self.data, self.batch_size, self.rank, self.world_size = data, batch_size, rank, world_size
        self.seed, self.pad_token_id, self.group_by_length, self.grad_accum = (
            seed,
            pad_token_id,
            group_by_length,
            grad_accum,
        )
        self.epoch = 0
        self.position = ReadPosition()  # lets a resumed run pass over batches without loading them
        if self.steps_per_epoch() == 0:
            raise DcrError(
                f"{len(data)} records give no full global batch of {batch_size} x {world_size} x {grad_accum} "
                "(micro batch x ranks x accumulation); add data or lower micro_batch_size"
            )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def megabatch_size(self) -> int:
        return self.batch_size * self.world_size * self.grad_accum

    def epoch_seed(self) -> int:
        """The seed of this epoch's torch generator (the plan draws three permutations from it, in LLaVA's order)."""
        return random.Random(f"{self.seed}-{self.epoch}").getrandbits(63)

    def _megabatches(self, indices: list[int], lengths: list[int], generator: torch.Generator) -> list[list[list[int]]]:
        """LLaVA's ``get_length_grouped_indices`` (llava_trainer.py:88-96) over ``indices``: shuffled,
        cut into megabatches, each split into its micro-batches (a partial last one stays whole)."""
        size, chunks = self.megabatch_size, self.world_size * self.grad_accum
        order = [indices[i] for i in torch.randperm(len(indices), generator=generator).tolist()]
        megabatches = []
        for start in range(0, len(order), size):
            megabatch = order[start : start + size]
            if len(megabatch) < size:
                megabatches.append([megabatch])
            elif self.group_by_length:
                megabatches.append(
                    split_to_even_chunks(sorted(megabatch, key=lengths.__getitem__, reverse=True), lengths, chunks)
                )
            else:
                megabatches.append([megabatch[c * self.batch_size : (c + 1) * self.batch_size] for c in range(chunks)])
        return megabatches

    def plan(self) -> list[list[list[int]]]:
        """Per step, the micro-batch of each rank: ``plan()[step][rank]``."""
        generator = torch.Generator().manual_seed(self.epoch_seed())
        lengths = [self.data.length(i) for i in range(len(self.data))]
        images = [i for i in range(len(self.data)) if self.data.has_image(i)]
        texts = [i for i in range(len(self.data)) if not self.data.has_image(i)]
        if not images or not texts:  # one modality: one shuffle, no reordering of megabatches
            megabatches = self._megabatches(images or texts, lengths, generator)
        else:  # llava_trainer.py:66-85: the last megabatch of each modality is held back, the rest shuffled
            image_batches = self._megabatches(images, lengths, generator)
            text_batches = self._megabatches(texts, lengths, generator)
            rest = image_batches[:-1] + text_batches[:-1]
            megabatches = [rest[i] for i in torch.randperm(len(rest), generator=generator).tolist()]
            megabatches += [image_batches[-1], text_batches[-1]]
        megabatches = [m for m in megabatches if sum(map(len, m)) == self.megabatch_size]  # whole global batches only
        world = self.world_size
        return [megabatch[k * world : (k + 1) * world] for megabatch in megabatches for k in range(self.grad_accum)]

    def steps_per_epoch(self) -> int:
        """Micro-batch steps per epoch (the same on every rank)."""
        images = sum(self.data.has_image(i) for i in range(len(self.data)))
        return epoch_steps(images, len(self.data) - images, self.batch_size, self.world_size, self.grad_accum)

    def __iter__(self) -> Iterator[dict]:
        worker = get_worker_info()
        worker_id, num_workers = (worker.id, worker.num_workers) if worker else (0, 1)
        reader, skip = self.position.begin(worker_id, num_workers)
        for step in self.plan()[reader::num_workers]:
            self.position.done += 1
            if self.position.done > skip:  # a resumed reader loads nothing before its position
                yield self.collate([self.data[i] for i in step[self.rank]])

    def collate(self, samples: list[Sample | None]) -> dict:
        return collate(samples, self.pad_token_id)


def collate(samples: list[Sample | None], pad_token_id: int) -> dict:
    """A padded micro-batch of samples (None: a record skipped as too long)."""
    kept = [s for s in samples if s is not None]
    skipped = len(samples) - len(kept) + sum(s.skipped for s in kept)
    if not kept:  # every rank must run this step; an empty micro-batch cannot
        raise DcrError("a whole micro-batch was too long for model_max_length; raise model_max_length")
    longest = max(len(s.input_ids) for s in kept)
    input_ids = torch.full((len(kept), longest), pad_token_id, dtype=torch.long)
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
