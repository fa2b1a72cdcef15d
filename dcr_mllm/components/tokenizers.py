"""The tiny models' tokenizers, built offline: OpenAI CLIP's BPE tokenizer from the file open_clip
ships, a SentencePiece model laid out like SigLIP's, and a byte-level BPE for the tiny Llama, each
deterministic. The tiny preset (``presets.tiny``) and the world's models (``world.models``) save
them beside their weights.
"""

from __future__ import annotations

import functools
import gzip
import io
from pathlib import Path

CLIP_VOCAB_SIZE = 49408
CLIP_CONTEXT_LENGTH = 77
SIGLIP_CONTEXT_LENGTH = 64


@functools.lru_cache(maxsize=1)
def clip_tokenizer():
    """The real OpenAI CLIP BPE tokenizer, built from the BPE file that open_clip ships.

    The vocabulary is assembled exactly as OpenAI CLIP / open_clip's SimpleTokenizer do it:
    the 256 byte-unicode characters, the same with ``</w>``, the first 48894 merges joined,
    then the two special tokens (49408 entries; ids 49406/49407 are start/end of text).
    """
    from open_clip.tokenizer import bytes_to_unicode, default_bpe
    from transformers import CLIPTokenizer

    num_merges = CLIP_VOCAB_SIZE - 2 * 256 - 2  # 48894; line 0 of the file is a header
    with gzip.open(default_bpe(), "rt", encoding="utf-8") as bpe:
        lines = bpe.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 1 + num_merges]]
    byte_chars = list(bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(
        vocab={token: i for i, token in enumerate(vocab)},
        merges=merges,
        model_max_length=CLIP_CONTEXT_LENGTH,
    )


def clip_tokenizer_files(out_dir: str | Path) -> Path:
    """Write the CLIP tokenizer in HF format: tokenizer.json, tokenizer_config.json, vocab.json, merges.txt.

    transformers 5 ``save_pretrained`` writes only tokenizer.json (+ config); vocab.json and
    merges.txt are added so that the directory matches a hub CLIP repo for older loaders too.

    Known differences from open_clip's SimpleTokenizer, on the same ids otherwise: SimpleTokenizer
    first runs ftfy and unescapes HTML entities (``&amp;``), the HF tokenizer applies NFC instead;
    SimpleTokenizer pads with id 0, the HF tokenizer with ``<|endoftext|>`` (49407); a literal
    ``<|endoftext|>`` in the text is the special token for HF but plain text for open_clip
    (whose special tokens are spelled ``<start_of_text>``/``<end_of_text>``, same ids).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = clip_tokenizer()
    tokenizer.save_pretrained(out_dir)
    tokenizer.backend_tokenizer.model.save(str(out_dir))
    return out_dir


# A fixed caption corpus for the tiny SigLIP tokenizer: enough words for captions in tests.
_COLORS = ["red", "green", "blue", "yellow", "black", "white", "orange", "purple", "brown", "gray", "pink"]
_OBJECTS = ["cat", "dog", "car", "tree", "house", "bird", "boat", "chair", "cup", "flower", "horse", "person"]
_TEMPLATES = ("a photo of a {} {}.", "the {} {} is on the left", "there are two {} {}s here")


def siglip_spiece_model() -> bytes:
    """Train a tiny SentencePiece unigram model, laid out like SigLIP's (pad 0, eos 1, unk 2).

    SigLIP's real 32k spiece.model cannot be obtained offline; a tokenizer trained on a fixed
    corpus keeps the real ``SiglipTokenizer`` code path. Training is deterministic.
    """
    import sentencepiece as spm

    corpus = [t.format(c, o) for t in _TEMPLATES for c in _COLORS for o in _OBJECTS]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus),
        model_writer=model,
        model_type="unigram",
        vocab_size=256,  # an upper bound: this corpus yields fewer pieces
        hard_vocab_limit=False,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    return model.getvalue()


LLAMA_VOCAB_SIZE = 1024
LLAMA_SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")


def llama_corpus() -> list[str]:
    """Deterministic text the tiny tokenizer learns from: the synthetic scenes' words and the chat
    templates' strings, so the tiny pipeline's prompts tokenize into short sequences."""
    import itertools

    from dcr_mllm.data.synthetic import ATTRIBUTE_VALUES, SceneAttributes, caption
    from dcr_mllm.prompts import CHOICE_PROMPT, SHORT_ANSWER_PROMPT, VICUNA_ROLES, VICUNA_SYSTEM

    names = list(ATTRIBUTE_VALUES)
    lines = [
        VICUNA_SYSTEM,
        " ".join(f"{role}:" for role in VICUNA_ROLES)
        + CHOICE_PROMPT
        + SHORT_ANSWER_PROMPT
        + " Is there a in the image? Yes. No.",
        "What colour are the shapes? How many shapes are there? Which way do they point? Where are they?",
        "Describe the image briefly. Render a clear and concise summary of the photo. (a) (b) (c) (d)",
    ]
    for values in itertools.islice(itertools.product(*(ATTRIBUTE_VALUES[n] for n in names)), 0, None, 7):
        lines.append(caption(SceneAttributes(**dict(zip(names, values)))))
    return lines


def llama_tokenizer():
    """The tiny Llama's byte-level BPE tokenizer, trained on ``llama_corpus`` (deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=LLAMA_VOCAB_SIZE,
        special_tokens=list(LLAMA_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(llama_corpus(), trainer=trainer)
    bpe.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", bpe.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe, unk_token="<unk>", bos_token="<s>", eos_token="</s>", model_max_length=512
    )
