"""Write the trained LLaVA as a llava-hf directory: config, safetensors, processor, tokenizer,
chat template and a model card naming the tower. ``LlavaForConditionalGeneration`` and
``AutoProcessor.from_pretrained`` load it as is (so do lmms-eval's ``llava_hf`` and vLLM)."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from dcr_mllm.config import to_dict
from dcr_mllm.llava.build import add_language_lora, build_llava
from dcr_mllm.presets.real import local_path
from dcr_mllm.towers.lora import merge_adapters
from dcr_mllm.training import load_trainable_state

MODEL_CARD = "model_card.md"


def export_llava(cfg, out_dir: str | Path) -> Path:
    """Base model + pretrained projector + finetuned weights (LoRA merged) -> ``out_dir``."""
    out_dir = Path(out_dir)
    output_dir = Path(cfg.output_dir)
    model, processor = build_llava(cfg.tower, local_path(cfg.language_model), cfg.feature_layer)
    load_trainable_state(model, output_dir / "pretrain" / "trainable.safetensors", prefix="")
    if cfg.lora.enabled:  # the same adapters as in training, loaded, then folded into the weights
        add_language_lora(model, cfg.lora)
        load_trainable_state(model, output_dir / "finetune" / "trainable.safetensors", prefix="")
        merge_adapters(model.model.language_model)
    else:
        load_trainable_state(model, output_dir / "finetune" / "trainable.safetensors", prefix="")
    tmp = out_dir.with_name(out_dir.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp, safe_serialization=True)
    processor.save_pretrained(tmp)
    processor.image_processor.save_pretrained(tmp)  # preprocessor_config.json, for loaders that want it
    (tmp / MODEL_CARD).write_text(
        "# LLaVA-1.5 with a dcr-mllm vision tower\n\n"
        f"- vision tower: `{cfg.tower}` (feature layer {cfg.feature_layer})\n"
        f"- language model: `{cfg.language_model}`\n"
        f"- finetune: {'LoRA r %d, merged' % cfg.lora.r if cfg.lora.enabled else 'full'}\n\n"
        "Produced by `dcr-mllm llava-pretrain` and `dcr-mllm llava-finetune`. Load it with\n"
        "`LlavaForConditionalGeneration.from_pretrained` and `AutoProcessor.from_pretrained`.\n\n"
        f"## Config\n\n```yaml\n{yaml.safe_dump(to_dict(cfg), sort_keys=False)}```\n"
    )
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return out_dir
