"""Stage two: LLaVA-1.5 with any tower — projector pretraining, then instruction tuning.

* ``pretrain``: only the projector trains (``plain`` template; LLaVA-1.5: lr 1e-3, cosine,
  3 % warm-up, global batch 256, one epoch, ZeRO-2).
* ``finetune``: projector + language model train, the tower stays frozen (``vicuna_v1``;
  lr 2e-5, global batch 128, one epoch, ZeRO-3, gradient checkpointing). With ``lora.enabled``
  the language model gets LoRA adapters instead (r 128, alpha 256) and the projector its own lr.

Both run through the project's training engine (resume, checkpoints, per-rank data), and the
finetune stage ends by writing ``output_dir/model``: a llava-hf directory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dcr_mllm.errors import DcrError
from dcr_mllm.llava.build import add_language_lora, build_llava, vision_layout
from dcr_mllm.llava.data import ConversationData, GroupedBatches, read_records
from dcr_mllm.llava.synthetic import write_synthetic_conversations
from dcr_mllm.presets.real import local_path
from dcr_mllm.training import ResumableBatches, TrainConfig, Trainer, barrier, init_distributed, is_finished, load_trainable_state

LLAMA_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PROJECTOR = "multi_modal_projector"


@dataclass
class ConversationSettings:
    json: str = ""  # a LLaVA conversation file; empty = the synthetic set (written under output_dir/data)
    image_folder: str = ""
    model_max_length: int = 2048
    group_by_length: bool = True


@dataclass
class LanguageLora:
    enabled: bool = False
    r: int = 128
    alpha: int = 256
    dropout: float = 0.05
    projector_lr: float = 2e-5
    targets: list[str] = field(default_factory=lambda: list(LLAMA_LORA_TARGETS))


@dataclass
class LlavaTrainConfig:
    tower: str = "outputs/enhance_tiny/tower"  # stage one's output by default
    language_model: str = "tiny-llama"
    output_dir: str = "outputs/llava_tiny"
    seed: int = 0
    feature_layer: int = -2
    synthetic_images: int = 64
    pretrain_data: ConversationSettings = field(default_factory=ConversationSettings)
    finetune_data: ConversationSettings = field(default_factory=ConversationSettings)
    pretrain: TrainConfig = field(default_factory=lambda: TrainConfig(
        lr=1e-3, scheduler="cosine", warmup_ratio=0.03, epochs=1, zero_stage=2))
    finetune: TrainConfig = field(default_factory=lambda: TrainConfig(
        lr=2e-5, scheduler="cosine", warmup_ratio=0.03, epochs=1, zero_stage=3, gradient_checkpointing=True))
    lora: LanguageLora = field(default_factory=LanguageLora)


def validate(cfg: LlavaTrainConfig, stage: str) -> None:
    """Everything checkable without building a model: tower shape, LM path, data files."""
    if stage not in ("pretrain", "finetune"):
        raise DcrError(f"unknown stage {stage!r}; use pretrain or finetune")
    vision_layout(cfg.tower, cfg.feature_layer)
    local_path(cfg.language_model)
    data = cfg.pretrain_data if stage == "pretrain" else cfg.finetune_data
    if data.json:
        read_records(data.json)
        if not Path(data.image_folder).is_dir():
            raise DcrError(f"image folder {data.image_folder!r} does not exist; set {stage}_data.image_folder")
    if stage == "finetune" and not is_finished(Path(cfg.output_dir) / "pretrain"):
        raise DcrError(f"the pretrain stage has not finished in {Path(cfg.output_dir) / 'pretrain'}; run llava-pretrain first")


def build_for_stage(cfg: LlavaTrainConfig, stage: str):
    """(model, processor) with exactly the stage's parameters trainable."""
    torch.manual_seed(cfg.seed)  # the projector starts the same on every rank
    model, processor = build_llava(cfg.tower, local_path(cfg.language_model), cfg.feature_layer)
    model.requires_grad_(False)
    if stage == "pretrain":
        model.model.multi_modal_projector.requires_grad_(True)
        return model, processor
    load_trainable_state(model, Path(cfg.output_dir) / "pretrain" / "trainable.safetensors", prefix="")
    model.model.multi_modal_projector.requires_grad_(True)
    if cfg.lora.enabled:
        add_language_lora(model, cfg.lora)
        for name, param in model.model.language_model.named_parameters():
            param.requires_grad_("lora_" in name)
    else:
        model.model.language_model.requires_grad_(True)
        model.lm_head.requires_grad_(True)
    if cfg.finetune.gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    return model, processor


def conversation_data(cfg: LlavaTrainConfig, stage: str, processor, is_main: bool) -> ConversationData:
    settings = cfg.pretrain_data if stage == "pretrain" else cfg.finetune_data
    if settings.json:
        json_path, image_folder = Path(settings.json), Path(settings.image_folder)
    else:
        out = Path(cfg.output_dir) / "data"
        if is_main:
            write_synthetic_conversations(out, cfg.synthetic_images, seed=cfg.seed)
        barrier()
        json_path, image_folder = out / f"{stage}.json", out / "images"
    layout = vision_layout(cfg.tower, cfg.feature_layer)
    template = "plain" if stage == "pretrain" else "vicuna_v1"
    return ConversationData(read_records(json_path), image_folder, processor, template, layout.image_seq_length, settings.model_max_length)


def run_llava(cfg: LlavaTrainConfig, stage: str) -> Path:
    """Train one stage (resuming if interrupted); after finetune, export the llava-hf model."""
    validate(cfg, stage)
    output_dir = Path(cfg.output_dir).resolve()
    stage_dir = output_dir / stage
    model_dir = output_dir / "model"
    if is_finished(stage_dir) and (stage == "pretrain" or (model_dir / "model_card.md").is_file()):
        print(f"stage {stage}: already finished in {stage_dir}; nothing to do")
        return model_dir if stage == "finetune" else stage_dir
    dist_info = init_distributed()
    train_cfg = cfg.pretrain if stage == "pretrain" else cfg.finetune
    if stage == "finetune" and cfg.lora.enabled:
        train_cfg.group_lrs = {PROJECTOR: cfg.lora.projector_lr, **train_cfg.group_lrs}

    if not is_finished(stage_dir):
        model, processor = build_for_stage(cfg, stage)
        data = conversation_data(cfg, stage, processor, dist_info.is_main)
        settings = cfg.pretrain_data if stage == "pretrain" else cfg.finetune_data
        plan = GroupedBatches(data, train_cfg.micro_batch_size, dist_info.rank, dist_info.world_size, cfg.seed,
                              processor.tokenizer.pad_token_id, settings.group_by_length)
        if train_cfg.epochs > 0:
            train_cfg.max_steps = max(1, math.ceil(train_cfg.epochs * plan.steps_per_epoch() / train_cfg.grad_accum))
        trainer = Trainer(model.to(dist_info.device), train_cfg, stage_dir, cfg.seed, dist_info)
        batches = ResumableBatches(plan, None, None, train_cfg.num_workers)
        dtype = next(model.parameters()).dtype

        def step(engine, batch, generator):
            pixel_values = batch["pixel_values"]
            out = engine(
                input_ids=batch["input_ids"].to(dist_info.device),
                attention_mask=batch["attention_mask"].to(dist_info.device),
                labels=batch["labels"].to(dist_info.device),
                pixel_values=None if pixel_values is None else pixel_values.to(dist_info.device, dtype),
            )
            return out.loss, {"loss": out.loss.item(), "skipped_records": float(batch["skipped"])}

        trainer.fit(batches, step)
        del trainer, model

    if stage == "pretrain":
        return stage_dir
    if dist_info.is_main and not (model_dir / "model_card.md").is_file():
        from dcr_mllm.llava.export import export_llava

        export_llava(cfg, model_dir)
    barrier()
    return model_dir
