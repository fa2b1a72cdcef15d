"""Write the trained LLaVA as a llava-hf directory: config, safetensors, processor, tokenizer,
chat template and a model card naming the tower. ``LlavaForConditionalGeneration`` and
``AutoProcessor.from_pretrained`` load it as is (so do lmms-eval's ``llava_hf`` and vLLM).

The model is never built: the checkpoint is streamed tensor by tensor, as ``save_pretrained``
would lay it out (same keys, same shards, same index). Base tensors come from the tower's and
the LM's safetensors files, trained ones from the stages' ``trainable.safetensors``, and LoRA
adapters are folded in per weight (W + scale * B @ A, as peft merges). A 13B model exports
with about one shard in memory, instead of a float32 copy of the whole model.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml

from dcr_mllm.config import to_dict
from dcr_mllm.errors import DcrError
from dcr_mllm.io import atomic_dir
from dcr_mllm.llava.build import (
    EMBED,
    LM_HEAD,
    PROJECTOR_PREFIX,
    base_tensors,
    base_value,
    build_processor,
    llava_config,
)
from dcr_mllm.llava.shards import DTYPES, INDEX_NAME, Cast, StoredTensor, read_header, write_shard
from dcr_mllm.presets.real import local_path

MODEL_CARD = "model_card.md"
#: shards as llava-hf releases have them; the export holds about one in memory
MAX_SHARD_SIZE = "5GB"
LORA_A, LORA_B = ".lora_A.default.weight", ".lora_B.default.weight"


def export_llava(
    cfg, out_dir: str | Path, max_shard_size: int | str = MAX_SHARD_SIZE, dtype: torch.dtype = torch.float32
) -> Path:
    """Base model + pretrained projector + finetuned weights (LoRA merged) -> ``out_dir``."""
    out_dir = Path(out_dir)
    output_dir = Path(cfg.output_dir)
    language_model = local_path(cfg.language_model)
    processor = build_processor(cfg.tower, language_model, cfg.feature_layer)
    processor.image_processor.do_pad = (
        cfg.finetune_data.image_aspect_ratio == "pad"
    )  # the pixels the model was tuned on
    skeleton = _skeleton(cfg, language_model, processor.tokenizer, dtype)
    saved = _saved_names(skeleton)
    trained = _trained_tensors(output_dir, cfg.lora, set(saved.values()))
    lora_scale = cfg.lora.alpha / cfg.lora.r if cfg.lora.enabled else 0.0
    base = base_tensors(
        cfg.tower, language_model, [n for n in saved.values() if n not in trained or _has_lora(n, trained)]
    )
    vocab = skeleton.config.text_config.vocab_size

    def value(name: str):
        if _has_lora(name, trained):
            stem = name.removesuffix(".weight")
            b, a = trained[stem + LORA_B].load(torch.float32), trained[stem + LORA_A].load(torch.float32)
            return (base[name].load(torch.float32) + (b @ a) * lora_scale).to(dtype)
        if name in trained:
            return _as_dtype(trained[name], dtype)
        if name in (EMBED, LM_HEAD):
            return base_value(name, base[name], vocab).to(dtype)
        return _as_dtype(base[name], dtype)

    with atomic_dir(out_dir) as tmp:
        _write_weights(skeleton, saved, value, tmp, max_shard_size)
        skeleton.config.architectures = [type(skeleton).__name__]
        skeleton.config.save_pretrained(tmp)
        skeleton.generation_config.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        processor.image_processor.save_pretrained(tmp)  # preprocessor_config.json, for loaders that want it
        (tmp / MODEL_CARD).write_text(
            "# LLaVA-1.5 with a dcr-mllm vision tower\n\n"
            f"- vision tower: `{cfg.tower}` (feature layer {cfg.feature_layer})\n"
            f"- language model: `{cfg.language_model}`\n"
            f"- finetune: {f'LoRA r {cfg.lora.r}, merged' if cfg.lora.enabled else 'full'}\n\n"
            "Produced by `dcr-mllm llava-pretrain` and `dcr-mllm llava-finetune`. Load it with\n"
            "`LlavaForConditionalGeneration.from_pretrained` and `AutoProcessor.from_pretrained`.\n\n"
            f"## Config\n\n```yaml\n{yaml.safe_dump(to_dict(cfg), sort_keys=False)}```\n"
        )
    return out_dir


def _skeleton(cfg, language_model: Path, tokenizer, dtype: torch.dtype):
    """The model on the meta device: its config, names and shapes, and no memory."""
    from transformers import LlavaForConditionalGeneration

    config = llava_config(cfg.tower, language_model, cfg.feature_layer, tokenizer, dtype)
    config.dtype = str(dtype).removeprefix("torch.")
    with torch.device("meta"):
        skeleton = LlavaForConditionalGeneration(config).to(dtype)
    skeleton.generation_config.pad_token_id = tokenizer.pad_token_id
    return skeleton


def _saved_names(skeleton) -> dict[str, str]:
    """Each key ``save_pretrained`` writes (in its order) -> the model's own parameter name."""
    from transformers.core_model_loading import revert_weight_conversion
    from transformers.modeling_utils import remove_tied_weights_from_state_dict

    state = remove_tied_weights_from_state_dict(skeleton.state_dict(), skeleton)
    own_name = {next(iter(revert_weight_conversion(skeleton, {name: tensor}))): name for name, tensor in state.items()}
    return {key: own_name[key] for key in revert_weight_conversion(skeleton, state)}


def _trained_tensors(output_dir: Path, lora, names: set[str]) -> dict[str, StoredTensor]:
    """The pretrained projector, overridden by what the finetune stage trained (LoRA adapters included)."""
    trained = {}
    for stage in ("pretrain", "finetune"):
        path = output_dir / stage / "trainable.safetensors"
        if not path.is_file():
            raise DcrError(f"{path} does not exist; run llava-{stage} first")
        trained.update(read_header(path)[0])
    unknown = [n for n in trained if n not in names and not (lora.enabled and n.endswith((LORA_A, LORA_B)))]
    if unknown:
        raise DcrError(
            f"{output_dir} holds trained tensors this model lacks ({', '.join(unknown[:3])}); it belongs to another model or lora setting"
        )
    if not any(n.startswith(PROJECTOR_PREFIX) for n in trained):
        raise DcrError(f"{output_dir} holds no trained projector; rerun llava-pretrain")
    return trained


def _has_lora(name: str, trained: dict) -> bool:
    return name.endswith(".weight") and name.removesuffix(".weight") + LORA_A in trained


def _as_dtype(stored: StoredTensor, dtype: torch.dtype):
    """A stored tensor as written: its bytes copied as they are when the dtype matches."""
    return stored if DTYPES[stored.dtype] == dtype else Cast(stored, dtype)


def _write_weights(skeleton, saved: dict[str, str], value, out: Path, max_shard_size: int | str) -> None:
    """Safetensors shards (and the index when there are several) split exactly as ``save_pretrained`` splits them."""
    from huggingface_hub import split_torch_state_dict_into_shards

    shapes = dict(skeleton.state_dict())
    split = split_torch_state_dict_into_shards(
        {key: shapes[name] for key, name in saved.items()},
        filename_pattern="model{suffix}.safetensors",
        max_shard_size=max_shard_size,
    )
    for file, keys in split.filename_to_tensors.items():
        write_shard(out / file, [(key, value(saved[key])) for key in keys], {"format": "pt"})
    if split.is_sharded:
        index = {
            "metadata": {"total_parameters": skeleton.num_parameters(), **split.metadata},
            "weight_map": split.tensor_to_filename,
        }
        (out / INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
