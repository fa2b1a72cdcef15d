"""The text side of a whole CLIP in OpenAI ``clip``'s or open_clip's layout (``convert-tower
--tokenizer``), so a converted tower keeps what MMVP-VLM and zero-shot read.

The mapping follows transformers' ``convert_clip_original_pytorch_to_hf.py`` (huggingface/transformers
@ 0ea01089f778cba53d0a06e62972b8be1ed554e7, lines 23-103) for the text side: ``token_embedding`` and
``positional_embedding`` to the embeddings, ``transformer.resblocks.N`` to ``text_model.encoder.layers.N``
(``in_proj`` split into q, k, v), ``ln_final`` to ``final_layer_norm``, ``text_projection.T`` to
``text_projection.weight``, ``logit_scale`` kept. open_clip pools the text at the highest token id
(the end-of-text token, the last of the vocabulary); transformers pools at the first
``eos_token_id``, which is therefore set to the last id. The source is open_clip's whole ``CLIP``
(text tower included), run beside the converted model on fixed random token ids ending in that token.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from torch import Tensor, nn

from dcr_mllm.errors import DcrError

_L = "text_model.encoder.layers.{0}."
_TEXT_RULES = [  # source key -> HF keys of CLIPModel
    (r"token_embedding\.weight", ["text_model.embeddings.token_embedding.weight"]),
    (r"positional_embedding", ["text_model.embeddings.position_embedding.weight"]),
    (r"ln_final\.(weight|bias)", ["text_model.final_layer_norm.{0}"]),
    (r"text_projection", ["#text_projection.weight"]),
    (r"logit_scale", ["logit_scale"]),
    (r"transformer\.resblocks\.(\d+)\.ln_([12])\.(weight|bias)", [_L + "layer_norm{1}.{2}"]),
    (r"transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)", [_L + f"self_attn.{p}_proj.{{1}}" for p in "qkv"]),
    (r"transformer\.resblocks\.(\d+)\.attn\.out_proj\.(weight|bias)", [_L + "self_attn.out_proj.{1}"]),
    (r"transformer\.resblocks\.(\d+)\.mlp\.c_fc\.(weight|bias)", [_L + "mlp.fc1.{1}"]),
    (r"transformer\.resblocks\.(\d+)\.mlp\.c_proj\.(weight|bias)", [_L + "mlp.fc2.{1}"]),
]
#: what a tokenizer folder holds (BPE files, a fast tokenizer, SentencePiece's model), copied beside the tower
TOKENIZER_FILES = (
    "vocab.json",
    "merges.txt",
    "tokenizer.json",
    "spiece.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
)


def text_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The text side of a whole ViT CLIP's state dict; empty where it has none (a vision tower alone)."""
    return {k: v for k, v in state.items() if not k.startswith("visual.") and k not in ("attn_mask",)}


def text_cfg(text: dict[str, Tensor]) -> dict:
    """open_clip's ``text_cfg`` of the source, read from the shapes (heads: width / 64, as OpenAI's)."""
    if "token_embedding.weight" not in text or "text_projection" not in text:
        raise DcrError("the text side has no token_embedding/text_projection: only OpenAI clip's layout maps")
    vocab, width = text["token_embedding.weight"].shape
    return {
        "context_length": text["positional_embedding"].shape[0],
        "vocab_size": vocab,
        "width": width,
        "heads": max(1, width // 64),
        "layers": len({k.split(".")[2] for k in text if k.startswith("transformer.resblocks.")}),
        "mlp_ratio": text["transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / width,
    }


def map_text_keys(text: dict[str, Tensor]) -> dict[str, Tensor]:
    """The text tensors under CLIPModel's names; the first key no rule maps is refused."""
    mapped = {}
    for key, value in text.items():
        found = [(m, targets) for pattern, targets in _TEXT_RULES if (m := re.fullmatch(pattern, key))]
        if not found:
            raise DcrError(f"unknown text-side key {key!r}: not in OpenAI clip's layout; convert without --tokenizer")
        match, targets = found[0]
        parts = value.chunk(len(targets)) if len(targets) > 1 else [value]
        for target, part in zip(targets, parts):
            target = target.format(*match.groups())
            mapped[target.removeprefix("#")] = part.T.contiguous() if target.startswith("#") else part.contiguous()
    return mapped


def text_config(source: nn.Module, text_heads: int):
    """transformers' text config that matches open_clip's text tower ``source``."""
    from open_clip.transformer import QuickGELU
    from transformers import CLIPTextConfig

    block = source.transformer.resblocks[0]
    vocab = source.token_embedding.num_embeddings
    return CLIPTextConfig(
        vocab_size=vocab,
        hidden_size=source.token_embedding.embedding_dim,
        intermediate_size=block.mlp.c_fc.out_features,
        num_hidden_layers=len(source.transformer.resblocks),
        num_attention_heads=text_heads,
        max_position_embeddings=source.positional_embedding.shape[0],
        projection_dim=source.text_projection.shape[1],
        hidden_act="quick_gelu" if isinstance(block.mlp.gelu, QuickGELU) else "gelu",
        layer_norm_eps=source.ln_final.eps,
        eos_token_id=vocab - 1,  # open_clip pools at the highest id: the end-of-text token
        bos_token_id=vocab - 2,
        pad_token_id=0,
    )


def check_tokenizer(tokenizer_dir: str | Path, vocab_size: int, eos_last: bool = True) -> Path:
    """A folder with a tokenizer of the text side's vocabulary (``eos_last``: and its end-of-text
    token last, as open_clip's pooling at the highest id needs)."""
    from transformers import AutoTokenizer

    path = Path(tokenizer_dir)
    if not path.is_dir() or not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise DcrError(f"--tokenizer {path}: no tokenizer files there; give the base tower's folder")
    tokenizer = AutoTokenizer.from_pretrained(path)
    if len(tokenizer) != vocab_size or (eos_last and tokenizer.eos_token_id != vocab_size - 1):
        raise DcrError(
            f"--tokenizer {path} has {len(tokenizer)} tokens (end of text {tokenizer.eos_token_id}); the text side "
            f"has {vocab_size}{' with its end of text last' if eos_last else ''}: give the tokenizer of the tower's base"
        )
    return path


def copy_tokenizer(tokenizer_dir: str | Path, out_dir: Path) -> None:
    """The tokenizer's files, beside a converted tower."""
    for name in TOKENIZER_FILES:
        if (Path(tokenizer_dir) / name).is_file():
            shutil.copy2(Path(tokenizer_dir) / name, out_dir / name)


__all__ = ["check_tokenizer", "copy_tokenizer", "map_text_keys", "text_cfg", "text_config", "text_state"]
