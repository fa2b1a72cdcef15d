"""LLaVA conversation data: records, the two LLaVA-1.5 prompt templates, labels.

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
(``dcr_mllm.llava.train.batches``) follow LLaVA's modality/length grouping (``llava/train/llava_trainer.py``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from dcr_mllm.data.images import load_rgb
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
