"""LLaVA-1.5 prompts and labels, pinned: plain and vicuna_v1, multi-turn, text-only, malformed records, batches.
(Ids, labels, pixels and grouping against a transcription of LLaVA's source: test_llava15_reference.py.)"""

import json

import pytest

from dcr_mllm.errors import DcrError
from dcr_mllm.llava.build import build_processor
from dcr_mllm.llava.train.batches import GroupedBatches
from dcr_mllm.llava.train.data import IGNORE_INDEX, ConversationData, prompt_text, read_records, tokenize
from dcr_mllm.prompts import VICUNA_SYSTEM

TWO_TURNS = {
    "id": "1",
    "image": "a.png",
    "conversations": [
        {"from": "human", "value": "What colour is it?\n<image>"},
        {"from": "gpt", "value": "Red."},
        {"from": "human", "value": "How many?"},
        {"from": "gpt", "value": "Two."},
    ],
}
TEXT_ONLY = {"id": "2", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}]}


@pytest.fixture(scope="module")
def processor(tiny):
    return build_processor(tiny["clip"], tiny["llama"])


def test_plain_prompt_is_image_then_caption():
    assert prompt_text(TWO_TURNS, "plain") == "<image>Red.\n"


def test_vicuna_v1_prompt_matches_llava_1_5():
    expected = (
        f"{VICUNA_SYSTEM} USER: <image>\nWhat colour is it? ASSISTANT: Red.</s>USER: How many? ASSISTANT: Two.</s>"
    )
    assert prompt_text(TWO_TURNS, "vicuna_v1") == expected
    assert prompt_text(TEXT_ONLY, "vicuna_v1") == f"{VICUNA_SYSTEM} USER: Hi ASSISTANT: Hello.</s>"


def test_only_answers_carry_labels(processor):
    tokenizer = processor.tokenizer
    input_ids, labels = tokenize(TWO_TURNS, "vicuna_v1", tokenizer, image_seq_length=16, max_length=512)
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    assert input_ids[0] == tokenizer.bos_token_id and input_ids.count(image_id) == 16
    labelled = [i for i, label in enumerate(labels) if label != IGNORE_INDEX]
    assert tokenizer.decode([input_ids[i] for i in labelled]) == " Red.</s> Two.</s>"
    assert all(labels[i] == input_ids[i] for i in labelled)
    # the labelled spans are exactly the two answers, each right after its " ASSISTANT: "
    runs = [[labelled[0]]]
    for i in labelled[1:]:
        runs[-1].append(i) if i == runs[-1][-1] + 1 else runs.append([i])
    assert [tokenizer.decode([input_ids[i] for i in run]) for run in runs] == [" Red.</s>", " Two.</s>"]
    assert tokenizer.decode(input_ids[: runs[0][0]]).endswith("What colour is it? ASSISTANT:")

    plain_ids, plain_labels = tokenize(TWO_TURNS, "plain", tokenizer, image_seq_length=16, max_length=512)
    assert plain_ids[:17] == [tokenizer.bos_token_id] + [image_id] * 16 and set(plain_labels[:17]) == {IGNORE_INDEX}
    assert tokenizer.decode(plain_ids[17:]) == "Red.\n" and plain_labels[17:] == plain_ids[17:]

    text_ids, text_labels = tokenize(TEXT_ONLY, "vicuna_v1", tokenizer, image_seq_length=16, max_length=512)
    assert image_id not in text_ids
    assert tokenizer.decode([t for t, label in zip(text_ids, text_labels) if label != IGNORE_INDEX]) == " Hello.</s>"


def test_truncation_keeps_images_whole(processor):
    tokenizer = processor.tokenizer
    ids, labels = tokenize(TEXT_ONLY, "vicuna_v1", tokenizer, image_seq_length=16, max_length=10)
    assert len(ids) == len(labels) == 10
    assert tokenize(TWO_TURNS, "vicuna_v1", tokenizer, image_seq_length=16, max_length=12) is None


@pytest.mark.parametrize(
    "record, message",
    [
        ({"id": 1}, "record 0: field 'conversations'"),
        (
            {"conversations": [{"from": "human", "value": "x"}, {"from": "human", "value": "y"}]},
            "field 'conversations\\[1\\]'",
        ),
        (
            {"conversations": [{"from": "gpt", "value": "x"}, {"from": "human", "value": "y"}]},
            "record 0: field 'conversations' must be",
        ),
        (
            {
                "conversations": [
                    {"from": "gpt", "value": "x"},
                    {"from": "gpt", "value": "y"},
                    {"from": "gpt", "value": "z"},
                ]
            },
            "field 'conversations\\[1\\]'",
        ),
        (
            {
                "image": "a.png",
                "conversations": [{"from": "human", "value": "no token"}, {"from": "gpt", "value": "y"}],
            },
            "field 'image'",
        ),
        ({"image": 3, "conversations": []}, "field 'image' must be a path"),
    ],
)
def test_malformed_record_names_index_and_field(tmp_path, record, message):
    path = tmp_path / "data.json"
    path.write_text(json.dumps([record]))
    with pytest.raises(DcrError, match=message):
        read_records(path)


def write_images(folder, names, corrupt=()):
    from PIL import Image

    folder.mkdir(exist_ok=True)
    for name in names:
        if name in corrupt:
            (folder / name).write_bytes(b"not an image")
        else:
            Image.new("RGB", (40, 24), (200, 0, 0)).save(folder / name)


def test_batches_are_one_modality_and_ranks_split_them(tmp_path, processor):
    records = [dict(TWO_TURNS, id=str(i), image=f"{i}.png") for i in range(8)] + [
        dict(TEXT_ONLY, id=f"t{i}") for i in range(4)
    ]
    write_images(tmp_path, [f"{i}.png" for i in range(8)], corrupt={"3.png"})
    records.append(dict(TWO_TURNS, id="missing", image="missing.png"))
    data = ConversationData(records, tmp_path, processor, "vicuna_v1", image_seq_length=16, max_length=512)
    assert data.missing == 1 and len(data) == 12

    plans = [
        GroupedBatches(data, batch_size=2, rank=r, world_size=2, seed=0, pad_token_id=processor.tokenizer.pad_token_id)
        for r in (0, 1)
    ]
    assert plans[0].plan() == plans[1].plan() and plans[0].steps_per_epoch() == 3
    batches = [list(p) for p in plans]
    for step in range(3):
        with_images = [b["pixel_values"] is not None for b in (batches[0][step], batches[1][step])]
        assert with_images[0] == with_images[1], "every rank runs the tower in the same steps"
        for rank in (0, 1):
            batch = batches[rank][step]
            assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
            if batch["pixel_values"] is not None:
                assert batch["pixel_values"].shape == (2, 3, 32, 32)
                image_tokens = (batch["input_ids"] == processor.tokenizer.convert_tokens_to_ids("<image>")).sum()
                assert image_tokens == 2 * 16
    skipped = sum(b["skipped"] for rank_batches in batches for b in rank_batches)
    assert skipped <= 1  # the corrupt image, when its record was drawn (its labels are all masked)
    plans[0].set_epoch(1)
    assert plans[0].plan() != plans[1].plan()


def test_a_conversation_that_opens_with_an_answer_loses_that_turn_and_is_counted(tmp_path, processor):
    opening = dict(TWO_TURNS, conversations=[{"from": "gpt", "value": "Hello."}] + TWO_TURNS["conversations"])
    path = tmp_path / "data.json"
    path.write_text(json.dumps([opening, TEXT_ONLY]))
    records = read_records(path)  # accepted, as LLaVA accepts it
    assert prompt_text(records[0], "vicuna_v1") == prompt_text(TWO_TURNS, "vicuna_v1")
    assert prompt_text(records[0], "plain") == prompt_text(TWO_TURNS, "plain")
    write_images(tmp_path, ["a.png"])
    data = ConversationData(records, tmp_path, processor, "vicuna_v1", image_seq_length=16, max_length=512)
    assert data.dropped_turns == 1 and data.missing == 0 and len(data) == 2
    assert data[0].input_ids == tokenize(TWO_TURNS, "vicuna_v1", processor.tokenizer, 16, 512)[0]


def test_an_unknown_aspect_is_refused(tmp_path, processor):
    with pytest.raises(DcrError, match="unknown image aspect 'anyres'; use one of square, pad"):
        ConversationData([TEXT_ONLY], tmp_path, processor, "vicuna_v1", 16, 512, aspect="anyres")


@pytest.mark.parametrize("group_by_length", [True, False])
def test_each_step_is_one_modality_and_one_global_batch_on_every_rank(tmp_path, processor, group_by_length):
    """Two ranks, two accumulation steps: a global batch of 2 x 2 x 2 per group, one modality per step
    (the order within a group is LLaVA's, index for index: test_llava15_reference.py)."""
    records = [dict(TWO_TURNS, id=str(i), image="a.png") for i in range(17)]
    records += [
        dict(
            TEXT_ONLY,
            id=f"t{i}",
            conversations=[{"from": "human", "value": "word " * i}, {"from": "gpt", "value": "ok"}],
        )
        for i in range(1, 10)
    ]
    write_images(tmp_path, ["a.png"])
    data = ConversationData(records, tmp_path, processor, "vicuna_v1", image_seq_length=16, max_length=512)
    plans = [
        GroupedBatches(data, batch_size=2, rank=r, world_size=2, seed=1, group_by_length=group_by_length, grad_accum=2)
        for r in (0, 1)
    ]
    plan = plans[0].plan()
    assert plan == plans[1].plan() and len(plan) == plans[0].steps_per_epoch() == (17 // 8 + 9 // 8) * 2
    used = [i for step in plan for batch in step for i in batch]
    assert len(used) == len(set(used)) == 3 * 8, "whole global batches, no record twice"
    for k in range(0, len(plan), 2):  # one global batch = two accumulation steps
        megabatch = [i for step in plan[k : k + 2] for batch in step for i in batch]
        assert len({data.has_image(i) for i in megabatch}) == 1
    rank_batches = [list(p) for p in plans]
    assert [b["input_ids"].shape[0] for b in rank_batches[1]] == [2] * len(plan)
