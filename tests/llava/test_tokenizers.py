"""Sentencepiece-only tokenizers (LLaVA-1.5 and Vicuna ship ``tokenizer.model`` and no ``tokenizer.json``)
load offline in stage two and in convert-llava, tokenize as sentencepiece does, and chat in vicuna_v1."""

import io
import itertools
import json
import shutil
from pathlib import Path

import pytest
import sentencepiece as spm
import torch
from lmms_eval.protocol import ChatMessages
from PIL import Image
from transformers import AutoProcessor, LlavaForConditionalGeneration

from dcr_mllm.cli import main
from dcr_mllm.llava.build import build_llava
from dcr_mllm.prompts import VICUNA_SYSTEM

SP_VOCAB = 512
TEXT = "What colour is the star? Answer with one word."
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
    "where",
]


def _special(content: str) -> dict:
    return {
        "__type": "AddedToken",
        "content": content,
        "lstrip": False,
        "normalized": False,
        "rstrip": False,
        "single_word": False,
    }


@pytest.fixture(scope="session")
def sentencepiece_model() -> bytes:
    """A Llama-style sentencepiece model (BPE, byte fallback, <unk>/<s>/</s> = 0/1/2), trained here."""
    lines = [
        "A chat between a curious user and an artificial intelligence assistant.",
        "USER: What colour are the shapes? ASSISTANT:",
    ]
    lines += [" ".join(words) for words in itertools.islice(itertools.permutations(WORDS, 6), 0, 20000, 7)]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        model_type="bpe",
        vocab_size=SP_VOCAB,
        byte_fallback=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        character_coverage=1.0,
        num_threads=1,
        minloglevel=2,
    )
    return model.getvalue()


def vicuna_tokenizer(directory: Path, model: bytes) -> Path:
    """Replace a directory's tokenizer with the files a LLaVA-1.5 / Vicuna release has: tokenizer.model and its config."""
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (directory / name).unlink(missing_ok=True)
    (directory / "tokenizer.model").write_bytes(model)
    config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": _special("<s>"),
        "eos_token": _special("</s>"),
        "unk_token": _special("<unk>"),
        "clean_up_tokenization_spaces": False,
        "legacy": False,
        "model_max_length": 2048,
        "pad_token": None,
        "padding_side": "right",
        "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer",
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (directory / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<unk>", "unk_token": "<unk>"})
    )
    return directory


def sentencepiece_ids(model: bytes, text: str) -> list[int]:
    """What LLaVA's training code feeds the model: <s>, then sentencepiece's own encoding."""
    return [1, *spm.SentencePieceProcessor(model_proto=model).encode(text)]


def test_stage_two_builds_llava_on_a_sentencepiece_only_vicuna(tiny, sentencepiece_model, tmp_path):
    language_model = shutil.copytree(tiny["llama"], tmp_path / "vicuna")
    vicuna_tokenizer(language_model, sentencepiece_model)

    model, processor = build_llava(tiny["clip"], language_model)

    tokenizer = processor.tokenizer
    assert tokenizer(TEXT).input_ids == sentencepiece_ids(sentencepiece_model, TEXT)
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    assert (
        image_id >= SP_VOCAB
        and tokenizer.pad_token == "<pad>"
        and len(tokenizer) <= model.config.text_config.vocab_size
    )
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": TEXT}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=Image.new("RGB", (40, 40), (20, 200, 40)), text=prompt, return_tensors="pt")
    assert (inputs.input_ids == image_id).sum() == 16
    with torch.no_grad():
        assert torch.isfinite(model(**inputs).logits).all()


def test_convert_llava_takes_a_sentencepiece_only_checkpoint_and_chats_like_lmms_eval(
    make_original, sentencepiece_model, tmp_path, capsys
):
    src = vicuna_tokenizer(shutil.copytree(make_original(), tmp_path / "llava-v1.5-tiny"), sentencepiece_model)
    dst = tmp_path / "llava-hf"

    assert main(["convert-llava", "--input", str(src), "--output", str(dst)]) == 0, capsys.readouterr().err

    processor = AutoProcessor.from_pretrained(dst)
    tokenizer = processor.tokenizer
    assert tokenizer(TEXT).input_ids == sentencepiece_ids(sentencepiece_model, TEXT)
    assert tokenizer.convert_tokens_to_ids(["<image>", "<pad>"]) == [SP_VOCAB, SP_VOCAB + 1]
    # lmms-eval's llava_hf chat path: its ChatMessages through the processor's chat template, then generate
    image = Image.new("RGB", (32, 32), (0, 90, 200))
    chat = ChatMessages(
        messages=[{"role": "user", "content": [{"type": "image", "url": image}, {"type": "text", "text": TEXT}]}]
    )
    prompt = processor.apply_chat_template(chat.model_dump()["messages"], tokenize=False, add_generation_prompt=True)
    assert prompt == f"{VICUNA_SYSTEM} USER: <image>\n{TEXT} ASSISTANT:"
    inputs = processor(images=[image], text=prompt, return_tensors="pt")
    assert (inputs.input_ids == SP_VOCAB).sum() == 16
    model = LlavaForConditionalGeneration.from_pretrained(dst, dtype=torch.float32)
    generated = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert generated.shape[1] == inputs.input_ids.shape[1] + 3


def test_the_tiny_llama_learns_llava_s_own_system_prompt(tiny):
    """One vicuna_v1 system prompt ("a curious user") in the package; the tiny tokenizer is trained on
    it, so the prompt every tiny conversation opens with is a few tokens, not bytes."""
    from transformers import AutoTokenizer

    from dcr_mllm.components.tokenizers import llama_corpus

    assert VICUNA_SYSTEM in llama_corpus()
    package = Path(__file__).resolve().parents[2] / "dcr_mllm"
    assert [p.name for p in package.rglob("*.py") if "A chat between" in p.read_text()] == ["prompts.py"]
    tokens = AutoTokenizer.from_pretrained(tiny["llama"])(VICUNA_SYSTEM)["input_ids"]
    assert len(tokens) < len(VICUNA_SYSTEM.split()) * 1.5
