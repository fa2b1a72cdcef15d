"""Stage two's data path held against a transcription of LLaVA-1.5's own source.

Upstream: haotian-liu/LLaVA at c121f0432da27facab705978f83c4ada465e46fd. Each transcribed piece
cites its file and lines; they run here on a Llama-style sentencepiece tokenizer trained locally,
loaded as LLaVA loads it (the sentencepiece "slow" tokenizer, ``use_fast=False``, train.py:886-892).

Differences that remain, by design:

1. ``<image>``: LLaVA puts one placeholder id (-200, llava/constants.py) in the ids and expands it
   inside its model; llava-hf expects the image tokens in the ids, so ours has ``image_seq_length``
   ``<image>`` ids there. The comparison collapses each such run to -200 (labels: to one -100).
2. Tokenizer: ours is transformers 5's tokenizers-backed ``LlamaTokenizer`` built from the same
   ``tokenizer.model``; LLaVA's is the sentencepiece one. Both give the same ids on these prompts,
   which is asserted below, so the label spans are compared on identical ids.
3. Truncation and mismatches (not exercised): LLaVA cuts at ``model_max_length`` after expanding the
   image (an image can be cut) and masks a whole record on a "tokenization mismatch"; ours skips a
   record whose image would be cut, and its labels follow character spans, so no mismatch arises.
4. Grouping: LLaVA ends an epoch with one batch that mixes the two modalities' remainders; ours
   keeps a remainder only when it is a whole global batch (every rank must run the vision tower in
   the same steps under ZeRO-3). Every other step is the same, index for index.
5. Pixels: LLaVA-1.5 ran transformers 4's PIL ``CLIPImageProcessor``; transformers 5 loads the
   torchvision one for a saved model. Training here uses what ``AutoProcessor`` loads, so training
   and evaluation see the same pixels (the PIL backend differs by about 0.015 after normalisation).
"""

import copy
import io
import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoProcessor
from transformers.tokenization_utils_sentencepiece import SPIECE_UNDERLINE, SentencePieceBackend

from dcr_mllm.llava.build import build_processor
from dcr_mllm.llava.checkpoints.convert import convert_llava
from dcr_mllm.llava.train.batches import GroupedBatches
from dcr_mllm.llava.train.data import IGNORE_INDEX, ConversationData, prompt_text, tokenize
from dcr_mllm.prompts import VICUNA_CHAT_TEMPLATE

IMAGE_TOKEN_INDEX = -200  # llava/constants.py:9
IMAGE_SEQ = 4

# ---- transcription: llava/conversation.py ----------------------------------------------------------
# conv_vicuna_v1 (conversation.py:242-252) and conv_llava_plain (conversation.py:291-299)
V1_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
V1_ROLES, V1_SEP, V1_SEP2 = ("USER", "ASSISTANT"), " ", "</s>"
PLAIN_SEP = "\n"


def get_prompt_two(messages):
    """Conversation.get_prompt for SeparatorStyle.TWO (conversation.py:54-63)."""
    seps = [V1_SEP, V1_SEP2]
    ret = V1_SYSTEM + seps[0]
    for i, (role, message) in enumerate(messages):
        if message:
            ret += role + ": " + message + seps[i % 2]
        else:
            ret += role + ":"
    return ret


# ---- transcription: llava/mm_utils.py ----------------------------------------------------------------
def tokenizer_image_token(prompt, tokenizer, image_token_index=IMAGE_TOKEN_INDEX):
    """mm_utils.py:185-204."""
    prompt_chunks = [tokenizer(chunk).input_ids for chunk in prompt.split("<image>")]

    def insert_separator(X, sep):
        return [ele for sublist in zip(X, [sep] * len(X)) for ele in sublist][:-1]

    input_ids = []
    offset = 0
    if len(prompt_chunks) > 0 and len(prompt_chunks[0]) > 0 and prompt_chunks[0][0] == tokenizer.bos_token_id:
        offset = 1
        input_ids.append(prompt_chunks[0][0])
    for x in insert_separator(prompt_chunks, [image_token_index] * (offset + 1)):
        input_ids.extend(x[offset:])
    return input_ids


# ---- transcription: llava/train/train.py --------------------------------------------------------------
IS_TOKENIZER_GREATER_THAN_0_14 = True  # train.py:50; LLaVA pins tokenizers 0.15.1 (pyproject.toml:17)


def preprocess_multimodal(sources):
    """train.py:308-329 (mm_use_im_start_end False, no "mmtag" version: LLaVA-1.5's settings)."""
    for source in sources:
        for sentence in source:
            if "<image>" in sentence["value"]:
                sentence["value"] = sentence["value"].replace("<image>", "").strip()
                sentence["value"] = "<image>" + "\n" + sentence["value"]
                sentence["value"] = sentence["value"].strip()
    return sources


def preprocess_v1(sources, tokenizer, has_image):
    """train.py:414-497; returns (prompts, input_ids, labels) as lists."""
    roles = {"human": V1_ROLES[0], "gpt": V1_ROLES[1]}
    conversations = []
    for i, source in enumerate(sources):
        if roles[source[0]["from"]] != V1_ROLES[0]:
            source = source[1:]  # train.py:425-427: skip the first one if it is not from human
        messages = []
        for j, sentence in enumerate(source):
            role = roles[sentence["from"]]
            assert role == V1_ROLES[j % 2], f"{i}"
            messages.append((role, sentence["value"]))
        conversations.append(get_prompt_two(messages))
    if has_image:
        input_ids = [tokenizer_image_token(prompt, tokenizer) for prompt in conversations]
    else:  # one conversation per call here: padding="longest" adds nothing
        input_ids = [
            tokenizer(prompt, max_length=tokenizer.model_max_length, truncation=True).input_ids
            for prompt in conversations
        ]
    targets = copy.deepcopy(input_ids)
    sep = V1_SEP + V1_ROLES[1] + ": "
    for conversation, target in zip(conversations, targets):
        total_len = sum(t != tokenizer.pad_token_id for t in target)
        rounds = conversation.split(V1_SEP2)
        cur_len = 1
        target[:cur_len] = [IGNORE_INDEX] * cur_len
        for i, rou in enumerate(rounds):
            if rou == "":
                break
            parts = rou.split(sep)
            if len(parts) != 2:
                break
            parts[0] += sep
            if has_image:
                round_len = len(tokenizer_image_token(rou, tokenizer))
                instruction_len = len(tokenizer_image_token(parts[0], tokenizer)) - 2
            else:
                round_len = len(tokenizer(rou).input_ids)
                instruction_len = len(tokenizer(parts[0]).input_ids) - 2
            if i != 0 and not tokenizer.legacy and IS_TOKENIZER_GREATER_THAN_0_14:
                round_len -= 1
                instruction_len -= 1
            target[cur_len : cur_len + instruction_len] = [IGNORE_INDEX] * len(
                target[cur_len : cur_len + instruction_len]
            )
            cur_len += round_len
        target[cur_len:] = [IGNORE_INDEX] * len(target[cur_len:])
        assert cur_len == total_len, "LLaVA would mask this whole record (tokenization mismatch)"
    return conversations, input_ids, targets


def preprocess_plain(sources, tokenizer):
    """train.py:588-607."""
    conversations = []
    for source in sources:
        assert len(source) == 2
        assert "<image>" in source[0]["value"]
        source[0]["value"] = "<image>"
        conversations.append(source[0]["value"] + source[1]["value"] + PLAIN_SEP)
    input_ids = [tokenizer_image_token(prompt, tokenizer) for prompt in conversations]
    targets = copy.deepcopy(input_ids)
    for target, source in zip(targets, sources):
        tokenized_len = len(tokenizer_image_token(source[0]["value"], tokenizer))
        target[:tokenized_len] = [IGNORE_INDEX] * tokenized_len
    return conversations, input_ids, targets


def llava_preprocess(record, template, tokenizer):
    """LazySupervisedDataset.__getitem__'s text path (train.py:719-727) for one record."""
    sources = copy.deepcopy([record["conversations"]])
    if "image" in record:
        sources = preprocess_multimodal(sources)
    if template == "plain":
        return preprocess_plain(sources, tokenizer)
    return preprocess_v1(sources, tokenizer, has_image="image" in record)


def expand2square(pil_img, background_color):
    """train.py:703-714."""
    width, height = pil_img.size
    if width == height:
        return pil_img
    elif width > height:
        result = Image.new(pil_img.mode, (width, width), background_color)
        result.paste(pil_img, (0, (width - height) // 2))
        return result
    else:
        result = Image.new(pil_img.mode, (height, height), background_color)
        result.paste(pil_img, ((height - width) // 2, 0))
        return result


# ---- transcription: llava/train/llava_trainer.py ------------------------------------------------------
def split_to_even_chunks(indices, lengths, num_chunks):
    """llava_trainer.py:38-57."""
    if len(indices) % num_chunks != 0:
        return [indices[i::num_chunks] for i in range(num_chunks)]
    num_indices_per_chunk = len(indices) // num_chunks
    chunks = [[] for _ in range(num_chunks)]
    chunks_lengths = [0 for _ in range(num_chunks)]
    for index in indices:
        shortest_chunk = chunks_lengths.index(min(chunks_lengths))
        chunks[shortest_chunk].append(index)
        chunks_lengths[shortest_chunk] += lengths[index]
        if len(chunks[shortest_chunk]) == num_indices_per_chunk:
            chunks_lengths[shortest_chunk] = float("inf")
    return chunks


def get_modality_length_grouped_indices(lengths, batch_size, world_size, generator=None):
    """llava_trainer.py:60-85."""
    assert all(l != 0 for l in lengths), "Should not have zero length."
    if all(l > 0 for l in lengths) or all(l < 0 for l in lengths):
        return get_length_grouped_indices(lengths, batch_size, world_size, generator=generator)
    mm_indices, mm_lengths = zip(*[(i, l) for i, l in enumerate(lengths) if l > 0])
    lang_indices, lang_lengths = zip(*[(i, -l) for i, l in enumerate(lengths) if l < 0])
    mm_shuffle = [mm_indices[i] for i in get_length_grouped_indices(mm_lengths, batch_size, world_size, generator=None)]
    lang_shuffle = [
        lang_indices[i] for i in get_length_grouped_indices(lang_lengths, batch_size, world_size, generator=None)
    ]
    megabatch_size = world_size * batch_size
    mm_megabatches = [mm_shuffle[i : i + megabatch_size] for i in range(0, len(mm_shuffle), megabatch_size)]
    lang_megabatches = [lang_shuffle[i : i + megabatch_size] for i in range(0, len(lang_shuffle), megabatch_size)]
    last_mm = mm_megabatches[-1]
    last_lang = lang_megabatches[-1]
    additional_batch = last_mm + last_lang
    megabatches = mm_megabatches[:-1] + lang_megabatches[:-1]
    megabatch_indices = torch.randperm(len(megabatches), generator=generator)
    megabatches = [megabatches[i] for i in megabatch_indices]
    if len(additional_batch) > 0:
        megabatches.append(sorted(additional_batch))
    return [i for megabatch in megabatches for i in megabatch]


def get_length_grouped_indices(lengths, batch_size, world_size, generator=None, merge=True):
    """llava_trainer.py:88-96."""
    indices = torch.randperm(len(lengths), generator=generator)
    megabatch_size = world_size * batch_size
    megabatches = [indices[i : i + megabatch_size].tolist() for i in range(0, len(lengths), megabatch_size)]
    megabatches = [sorted(megabatch, key=lambda i: lengths[i], reverse=True) for megabatch in megabatches]
    megabatches = [split_to_even_chunks(megabatch, lengths, world_size) for megabatch in megabatches]
    return [i for megabatch in megabatches for batch in megabatch for i in batch]


# ---- a Llama-style sentencepiece tokenizer, as a Vicuna release ships it ---------------------------
WORDS = [
    "red",
    "green",
    "blue",
    "yellow",
    "circle",
    "square",
    "triangle",
    "star",
    "left",
    "right",
    "top",
    "bottom",
    "small",
    "large",
    "one",
    "two",
    "three",
    "shapes",
    "image",
    "colour",
]


@pytest.fixture(scope="module")
def vicuna(tiny, tmp_path_factory) -> Path:
    """The tiny Llama with a sentencepiece ``tokenizer.model`` trained with Llama's settings (BPE, byte
    fallback, identity normalisation, whitespace kept) and a Vicuna-v1.5 ``tokenizer_config.json``.

    As in Llama's vocabulary, "USER" is a piece and "▁USER" is not, so "USER" after "</s>" takes one
    token fewer than a round tokenized alone: what LLaVA's label arithmetic assumes (train.py:477-479).
    """
    lines = [
        V1_SYSTEM,
        "What colour are the shapes?\nAnswer the question using a single word or phrase. ASSISTANT: Red.</s>USER: Where?",
    ]
    lines += [" ".join(words) for words in itertools.islice(itertools.permutations(WORDS, 6), 0, 20000, 7)]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        model_type="bpe",
        vocab_size=512,
        byte_fallback=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        character_coverage=1.0,
        num_threads=1,
        minloglevel=2,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=True,
        split_digits=True,
        allow_whitespace_only_pieces=True,
    )
    directory = Path(shutil.copytree(tiny["llama"], tmp_path_factory.mktemp("vicuna") / "lm"))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (directory / name).unlink(missing_ok=True)
    (directory / "tokenizer.model").write_bytes(model.getvalue())

    def special(content):
        return {
            "__type": "AddedToken",
            "content": content,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
        }

    config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": special("<s>"),
        "eos_token": special("</s>"),
        "unk_token": special("<unk>"),
        "clean_up_tokenization_spaces": False,
        "legacy": False,
        "model_max_length": 2048,
        "pad_token": None,
        "padding_side": "right",
        "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer",
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    return directory


class SlowLlamaTokenizer(SentencePieceBackend):
    """transformers 4.37's sentencepiece ``LlamaTokenizer``, which LLaVA-1.5 trained with: the
    sentencepiece base (still in transformers 5) plus its ``tokenize`` override for ``legacy=False``
    and its ``<s>`` (transformers v4.37.2, models/llama/tokenization_llama.py, ``LlamaTokenizer.tokenize``
    and ``build_inputs_with_special_tokens``)."""

    def tokenize(self, text, **kwargs):
        if self.legacy or len(text) == 0:
            return super().tokenize(text, **kwargs)
        tokens = super().tokenize(SPIECE_UNDERLINE + text.replace(SPIECE_UNDERLINE, " "), **kwargs)
        if len(tokens) > 1 and tokens[0] == SPIECE_UNDERLINE and tokens[1] in self.all_special_tokens:
            tokens = tokens[1:]
        return tokens

    def build_inputs_with_special_tokens(self, token_ids_0, token_ids_1=None):
        return [self.bos_token_id, *token_ids_0]


@pytest.fixture(scope="module")
def llava_tokenizer(vicuna):
    tokenizer = SlowLlamaTokenizer(
        vocab_file=str(vicuna / "tokenizer.model"),
        legacy=False,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=2048,
        padding_side="right",
    )
    tokenizer.pad_token = tokenizer.unk_token  # train.py:902-904 (any version but v0)
    return tokenizer


@pytest.fixture(scope="module")
def processor(tiny, vicuna):
    return build_processor(tiny["clip"], vicuna)


RECORDS = {
    "two turns, image after the question": {
        "image": "a.png",
        "conversations": [
            {"from": "human", "value": "What colour is the star?\n<image>"},
            {"from": "gpt", "value": "Red."},
            {"from": "human", "value": "How many shapes are there?"},
            {"from": "gpt", "value": "Three shapes."},
        ],
    },
    "short answer prompt, digits": {
        "image": "a.png",
        "conversations": [
            {
                "from": "human",
                "value": "<image>\nIs there a blue circle at 12 o'clock?\nAnswer the question using a single word or phrase.",
            },
            {"from": "gpt", "value": "No"},
        ],
    },
    "text only, three turns": {
        "conversations": [
            {"from": "human", "value": "Name a colour."},
            {"from": "gpt", "value": "Green."},
            {"from": "human", "value": "And a shape?"},
            {"from": "gpt", "value": "A small square."},
            {"from": "human", "value": "Where is left?"},
            {"from": "gpt", "value": "Opposite right."},
        ]
    },
    "opens with an answer": {
        "image": "a.png",
        "conversations": [
            {"from": "gpt", "value": "Hello."},
            {"from": "human", "value": "<image>\nDescribe the image."},
            {"from": "gpt", "value": "Two yellow triangles point up."},
        ],
    },
}
PRETRAIN = {
    "image": "a.png",
    "conversations": [
        {"from": "human", "value": "Render a clear and concise summary of the photo.\n<image>"},
        {"from": "gpt", "value": "three small red stars pointing left"},
    ],
}


def collapse_images(input_ids, labels, image_id):
    """Ours with each run of image tokens folded back to LLaVA's single placeholder."""
    ids, labs, i = [], [], 0
    while i < len(input_ids):
        if input_ids[i] == image_id:
            assert input_ids[i : i + IMAGE_SEQ] == [image_id] * IMAGE_SEQ and set(labels[i : i + IMAGE_SEQ]) == {
                IGNORE_INDEX
            }
            ids.append(IMAGE_TOKEN_INDEX)
            labs.append(IGNORE_INDEX)
            i += IMAGE_SEQ
        else:
            ids.append(input_ids[i])
            labs.append(labels[i])
            i += 1
    return ids, labs


@pytest.mark.parametrize(
    "template, record",
    [("vicuna_v1", r) for r in RECORDS.values()] + [("plain", PRETRAIN)],
    ids=[*list(RECORDS), "plain"],
)
def test_prompts_ids_and_labels_match_llava_1_5(processor, llava_tokenizer, template, record):
    prompts, llava_ids, llava_labels = llava_preprocess(record, template, llava_tokenizer)
    assert prompt_text(record, template) == prompts[0]

    tokenizer = processor.tokenizer
    ids, labels = collapse_images(
        *tokenize(record, template, tokenizer, IMAGE_SEQ, 2048), tokenizer.convert_tokens_to_ids("<image>")
    )
    assert ids == llava_ids[0]
    assert labels == llava_labels[0]
    assert any(label != IGNORE_INDEX for label in labels)


def test_chat_template_renders_llava_1_5_eval_prompts(processor):
    """LLaVA's eval builds "<image>\\n" + question, then get_prompt with an empty assistant turn."""
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is the star?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Red."}]},
        {"role": "user", "content": [{"type": "text", "text": "How many?"}]},
    ]
    expected = get_prompt_two(
        [
            ("USER", "<image>\nWhat colour is the star?"),
            ("ASSISTANT", "Red."),
            ("USER", "How many?"),
            ("ASSISTANT", None),
        ]
    )
    assert processor.chat_template == VICUNA_CHAT_TEMPLATE
    assert processor.apply_chat_template(messages, add_generation_prompt=True) == expected
    assert (
        processor.apply_chat_template(messages[:1], add_generation_prompt=True)
        == f"{V1_SYSTEM} USER: <image>\nWhat colour is the star? ASSISTANT:"
    )


def test_image_then_pad_token_ids(processor):
    tokenizer = processor.tokenizer
    assert tokenizer.convert_tokens_to_ids(["<image>", "<pad>"]) == [
        512,
        513,
    ]  # llava-hf: 32000, 32001 after Vicuna's 32000
    assert tokenizer.pad_token == "<pad>"


def random_image(width, height, seed=0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize("size", [(77, 30), (30, 77), (40, 40)], ids=["wide", "tall", "square"])
def test_training_pixels_equal_saved_processor_and_expand2square(tiny, processor, tmp_path, size):
    folder = tmp_path / "images"
    folder.mkdir()
    image = random_image(*size)
    image.save(folder / "a.png")
    records = [dict(PRETRAIN, id=str(i)) for i in range(2)]
    data = ConversationData(records, folder, processor, "plain", IMAGE_SEQ, 2048, aspect="pad")
    batch = next(iter(GroupedBatches(data, batch_size=2, pad_token_id=processor.tokenizer.pad_token_id)))

    tower = AutoImageProcessor.from_pretrained(tiny["clip"])
    reference = tower(
        expand2square(image, tuple(int(x * 255) for x in tower.image_mean)), return_tensors="pt"
    ).pixel_values[0]
    processor.save_pretrained(tmp_path / "saved")
    saved = (
        AutoProcessor.from_pretrained(tmp_path / "saved").image_processor(image, return_tensors="pt").pixel_values[0]
    )
    assert (batch["pixel_values"][0] - reference).abs().max() < 1e-6
    assert (saved - reference).abs().max() < 1e-6

    square = ConversationData(records, folder, processor, "plain", IMAGE_SEQ, 2048, aspect="square")
    plain = tower(image, return_tensors="pt").pixel_values[0]  # LLaVA's "square": the tower's processor alone
    assert (square.pixels(image) - plain).abs().max() < 1e-6
    if size[0] != size[1]:
        assert (plain - reference).abs().max() > 0.1, "padding changes what the model sees"


def test_convert_llava_pads_as_the_checkpoint_was_trained(make_original, tiny, tmp_path):
    dst = tmp_path / "llava-hf"
    convert_llava(make_original(), dst)  # its config says image_aspect_ratio: pad, as LLaVA-1.5's do
    processor = AutoProcessor.from_pretrained(dst)
    image = random_image(90, 36, seed=1)
    tower = AutoImageProcessor.from_pretrained(tiny["clip"])
    reference = tower(
        expand2square(image, tuple(int(x * 255) for x in tower.image_mean)), return_tensors="pt"
    ).pixel_values
    assert (processor.image_processor(image, return_tensors="pt").pixel_values - reference).abs().max() < 1e-6
    assert (
        processor.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True)
        == f"{V1_SYSTEM} USER: Hi ASSISTANT:"
    )


class WordData:
    """Just what GroupedBatches reads of ConversationData: modality and LLaVA's word lengths."""

    def __init__(self, lengths: list[int]):
        self.lengths = lengths  # LLaVA's modality_lengths: positive with an image, negative without

    def __len__(self):
        return len(self.lengths)

    def has_image(self, index):
        return self.lengths[index] > 0

    def length(self, index):
        return abs(self.lengths[index])


def llava_steps(lengths, batch_size, world_size, grad_accum, seed):
    """LLaVA's micro-batches per step and rank: the sampler's order (global RNG, as LLaVATrainer
    passes no generator, llava_trainer.py:139-145) cut into micro-batches that accelerate deals out
    to the ranks in turn."""
    torch.manual_seed(seed)
    order = get_modality_length_grouped_indices(lengths, batch_size, world_size * grad_accum)
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return [batches[i : i + world_size] for i in range(0, len(batches), world_size)]


@pytest.mark.parametrize("images, texts", [(23, 11), (24, 11), (30, 0)])
def test_grouping_matches_llava_index_for_index(images, texts):
    rng = np.random.default_rng(images)
    lengths = [int(n) for n in rng.integers(1, 60, images)] + [-int(n) for n in rng.integers(1, 60, texts)]
    order = rng.permutation(len(lengths))
    lengths = [lengths[i] for i in order]  # the modalities interleaved in the file
    batch_size, world_size, grad_accum = 2, 2, 2
    plan = GroupedBatches(
        WordData(lengths),
        batch_size,
        rank=0,
        world_size=world_size,
        seed=5,
        group_by_length=True,
        grad_accum=grad_accum,
    )
    plan.set_epoch(3)
    ours = plan.plan()
    theirs = llava_steps(lengths, batch_size, world_size, grad_accum, plan.epoch_seed())

    megabatch = batch_size * world_size * grad_accum
    shuffled = (-(-images // megabatch) - 1 + -(-texts // megabatch) - 1) * grad_accum if texts else len(ours)
    assert len(ours) == plan.steps_per_epoch() == (images // megabatch + texts // megabatch) * grad_accum
    assert ours[:shuffled] == theirs[:shuffled]
    # the tail: LLaVA's one mixed batch of remainders; ours keeps its whole global batches of one modality
    tail = {i for step in ours[shuffled:] for batch in step for i in batch}
    assert tail <= {i for step in theirs[shuffled:] for batch in step for i in batch}
    assert len(tail) == (megabatch if images % megabatch == 0 and texts else 0)
    for step in ours:
        assert len({lengths[i] > 0 for batch in step for i in batch}) == 1, "one modality per step on every rank"
        assert all(len(batch) == batch_size for batch in step)


def test_chat_template_agrees_with_lmms_eval_fallback_on_one_turn(processor):
    """lmms-eval's llava_hf prompts with its own vicuna_v1 template when a model has none."""
    from jinja2 import Template
    from lmms_eval.models.chat.llava_hf import VICUNA_CHAT_TEMPLATE as LMMS_EVAL_TEMPLATE

    messages = [{"role": "user", "content": "<image>\nWhat colour is the star?"}]
    theirs = Template(LMMS_EVAL_TEMPLATE).render(messages=messages, add_generation_prompt=True, eos_token="</s>")
    assert processor.apply_chat_template(messages, add_generation_prompt=True) == theirs
