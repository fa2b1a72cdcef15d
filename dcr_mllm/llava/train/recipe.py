"""Stage two: LLaVA-1.5 with any tower — projector pretraining, then instruction tuning.

* ``pretrain``: only the projector trains (``plain`` template, images as the tower preprocesses
  them (``square``), random batches; LLaVA-1.5: lr 1e-3, cosine, 3 % warm-up, global batch 256,
  one epoch, ZeRO-2, gradient checkpointing).
* ``finetune``: projector + language model train, the tower stays frozen (``vicuna_v1``, images
  padded to a square first (``pad``), batches grouped by modality and length; lr 2e-5, global
  batch 128, one epoch, ZeRO-3, gradient checkpointing). With ``lora.enabled``
  the language model gets LoRA adapters instead (r 128, alpha 256) and the projector its own lr.

Both run through the project's training engine (resume, checkpoints, per-rank data), and the
finetune stage ends by writing ``output_dir/model``: a llava-hf directory.
"""

from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dcr_mllm.components.build_once import build_once
from dcr_mllm.errors import ConfigError, DcrError
from dcr_mllm.evaluation import freshness
from dcr_mllm.llava.build import add_language_lora, build_llava, vision_layout
from dcr_mllm.llava.train.batches import GroupedBatches, collate, epoch_steps
from dcr_mllm.llava.train.data import ASPECTS, IGNORE_INDEX, ConversationData, check_images, read_records
from dcr_mllm.llava.train.made_from import overwrite_stage, shaping_config, stage_record
from dcr_mllm.llava.train.synthetic import write_synthetic_conversations
from dcr_mllm.presets.real import local_path
from dcr_mllm.training import (
    ResumableBatches,
    TrainConfig,
    Trainer,
    barrier,
    init_distributed,
    is_finished,
    load_trainable_state,
)
from dcr_mllm.training.config import resolve_train_config
from dcr_mllm.training.export_marker import export_fingerprint, export_is_current
from dcr_mllm.training.log import logger
from dcr_mllm.training.zero import zero3_config
from dcr_mllm.weights import check_model_dir

#: the held-out records are drawn with this seed whatever the run's ``seed``: runs of several seeds
#: then differ only in the projector's initialisation and the data order, and hold out the same records
HELD_OUT_SEED = 0
LLAMA_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PROJECTOR = "multi_modal_projector"


@dataclass
class ConversationSettings:
    json: str = ""  # a LLaVA conversation file; empty = the synthetic set (written under output_dir/data)
    image_folder: str = ""
    model_max_length: int = 2048
    #: LLaVA's: "pad" (to a square of the mean colour, then the tower's preprocessing) or "square"
    image_aspect_ratio: str = "pad"
    group_by_length: bool = True  # LLaVA's group_by_modality_length: one modality and similar lengths per global batch
    #: share of the records held out (never trained on) for a held-out loss, as HF Trainer's eval_dataset
    eval_share: float = 0.0
    eval_every: int = 0  # optimizer steps between held-out losses (logged as eval/loss); needs eval_share


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
    tower: str  # a tower directory (stage one's output) or a preset name
    language_model: str  # a causal-LM directory or a preset name
    output_dir: str = "outputs/llava_tiny"
    seed: int = 0
    feature_layer: int = -2
    synthetic_images: int = 64
    pretrain_data: ConversationSettings = field(  # LLaVA-1.5's pretraining: no padding, no grouping
        default_factory=lambda: ConversationSettings(image_aspect_ratio="square", group_by_length=False)
    )
    finetune_data: ConversationSettings = field(default_factory=ConversationSettings)
    # one epoch each, as LLaVA-1.5; a positive max_steps wins over epochs (HF Trainer's rule)
    pretrain: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            max_steps=0, lr=1e-3, scheduler="cosine", warmup_ratio=0.03, epochs=1, gradient_checkpointing=True
        )
    )
    finetune: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            max_steps=0, lr=2e-5, scheduler="cosine", warmup_ratio=0.03, epochs=1, gradient_checkpointing=True
        )
    )
    lora: LanguageLora = field(default_factory=LanguageLora)


def resolve_config(cfg: LlavaTrainConfig) -> LlavaTrainConfig:
    """Check the values and settle each stage's ZeRO stage (LLaVA-1.5: pretrain 2, finetune 3),
    reading nothing but the DeepSpeed JSONs."""
    resolve_train_config(cfg.pretrain, "pretrain", default_zero_stage=2)
    resolve_train_config(cfg.finetune, "finetune", default_zero_stage=3)
    for name in ("pretrain_data", "finetune_data"):
        if getattr(cfg, name).model_max_length < 1:
            raise ConfigError(f"{name}.model_max_length must be at least 1")
        if getattr(cfg, name).image_aspect_ratio not in ASPECTS:
            raise ConfigError(f"{name}.image_aspect_ratio must be one of {', '.join(ASPECTS)}")
    unread = [
        f"lora.{f.name}"
        for f in dataclasses.fields(LanguageLora)
        if f.name != "enabled" and getattr(cfg.lora, f.name) != getattr(LanguageLora(), f.name)
    ]
    if unread and not cfg.lora.enabled:
        raise ConfigError(
            f"{', '.join(unread)} {'is' if len(unread) == 1 else 'are'} read only with lora.enabled=true; "
            f"enable LoRA or remove {'it' if len(unread) == 1 else 'them'}"
        )
    for name in ("pretrain_data", "finetune_data"):
        settings = getattr(cfg, name)
        if not 0 <= settings.eval_share < 1 or settings.eval_every < 0:
            raise ConfigError(f"{name}.eval_share must be in [0, 1) and {name}.eval_every 0 or more")
        if bool(settings.eval_share) != bool(settings.eval_every):
            raise ConfigError(
                f"{name}.eval_share and {name}.eval_every work together: set both (a held-out share and how often "
                "its loss is taken) or neither"
            )
    if cfg.synthetic_images < 1:
        raise ConfigError("synthetic_images must be at least 1")
    return cfg


def validate(cfg: LlavaTrainConfig, stage: str) -> None:
    """Everything checkable without building a model: values, tower shape, LM path, data files."""
    if stage not in ("pretrain", "finetune"):
        raise DcrError(f"unknown stage {stage!r}; use pretrain or finetune")
    resolve_config(cfg)
    vision_layout(cfg.tower, cfg.feature_layer)
    check_model_dir(local_path(cfg.language_model))
    data = cfg.pretrain_data if stage == "pretrain" else cfg.finetune_data
    if data.json:
        records = read_records(data.json)
        if not Path(data.image_folder).is_dir():
            raise DcrError(f"image folder {data.image_folder!r} does not exist; set {stage}_data.image_folder")
        check_images(records, Path(data.image_folder), f"{stage}_data.image_folder")
    if stage == "finetune" and not is_finished(Path(cfg.output_dir) / "pretrain"):
        raise DcrError(
            f"the pretrain stage has not finished in {Path(cfg.output_dir) / 'pretrain'}; run llava-pretrain first"
        )


def build_for_stage(cfg: LlavaTrainConfig, stage: str):
    """(model, processor) with exactly the stage's parameters trainable; under ZeRO-3 built
    partitioned in the training dtype, so no rank holds the whole model."""
    torch.manual_seed(cfg.seed)  # the projector starts the same on every rank
    ds_config = zero3_config(cfg.pretrain if stage == "pretrain" else cfg.finetune)
    model, processor = build_llava(cfg.tower, local_path(cfg.language_model), cfg.feature_layer, ds_config=ds_config)
    model.requires_grad_(False)
    if (cfg.pretrain if stage == "pretrain" else cfg.finetune).gradient_checkpointing:  # LLaVA-1.5: both stages
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
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
    return model, processor


def conversation_files(cfg: LlavaTrainConfig, stage: str, is_main: bool) -> tuple[Path, Path]:
    """(conversation JSON, image folder) of the stage: the configured ones, or the synthetic set,
    written once under output_dir/data."""
    settings = cfg.pretrain_data if stage == "pretrain" else cfg.finetune_data
    if settings.json:
        return Path(settings.json), Path(settings.image_folder)
    out = Path(cfg.output_dir) / "data"
    if is_main:
        write_synthetic_conversations(out, cfg.synthetic_images, seed=cfg.seed)
    barrier()
    return out / f"{stage}.json", out / "images"


def stage_steps(cfg: LlavaTrainConfig, stage: str, records: list[dict], world_size: int) -> int:
    """Optimizer steps the stage trains: a positive ``max_steps`` wins (HF Trainer's rule), else
    ``epochs`` passes over the records, counted as ``GroupedBatches`` plans them."""
    train_cfg = cfg.pretrain if stage == "pretrain" else cfg.finetune
    if train_cfg.max_steps > 0:
        return train_cfg.max_steps
    images = sum("image" in record for record in records)
    per_epoch = epoch_steps(images, len(records) - images, train_cfg.micro_batch_size, world_size, train_cfg.grad_accum)
    return max(1, math.ceil(train_cfg.epochs * per_epoch / train_cfg.grad_accum))


def held_out_split(records: list[dict], share: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(records to train on, held-out records): a seeded draw of ``share`` of them (at least one)."""
    if not share:
        return records, []
    held = set(random.Random(f"held-out-{seed}").sample(range(len(records)), max(1, round(share * len(records)))))
    return [r for i, r in enumerate(records) if i not in held], [r for i, r in enumerate(records) if i in held]


def llava_loss(engine, batch: dict, device, dtype) -> torch.Tensor:
    """The batch's causal-LM loss as transformers computes it (``ForCausalLMLoss``: the mean
    cross-entropy, in float32, of every labelled next token), with the LM head applied only where
    a label follows: in the world's instruction batches about one position in twenty, so the
    head's matmul and the softmax over the vocabulary shrink twentyfold."""
    labels = batch["labels"].to(device)
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX  # position t predicts token t + 1
    pixel_values = batch["pixel_values"]
    logits = engine(
        input_ids=batch["input_ids"].to(device),
        attention_mask=batch["attention_mask"].to(device),
        pixel_values=None if pixel_values is None else pixel_values.to(device, dtype),
        logits_to_keep=keep,
    ).logits
    return torch.nn.functional.cross_entropy(logits.float(), labels[:, 1:][keep[:, :-1]])


class HeldOutLoss:
    """``after_step`` hook: every ``every`` steps the token-weighted mean loss on the held-out
    records (``eval/loss``), the model in eval mode, without gradients, in a forked random state.
    Every rank runs every batch (under ZeRO-3 the forward pass is collective), so all agree."""

    def __init__(self, data: ConversationData, batch_size: int, pad_token_id: int, every: int, device, dtype):
        self.batches = _by_modality(data, batch_size)  # one modality per batch, as training has
        self.data, self.pad_token_id, self.every, self.device, self.dtype = data, pad_token_id, every, device, dtype
        self.collated = None

    def __call__(self, trainer, step: int) -> dict[str, float]:
        if step == 0 or step % self.every:
            return {}
        engine = trainer.engine
        engine.eval()
        total = tokens = 0.0
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            if self.collated is None:  # decoded once; the same batches every time
                self.collated = [
                    collate([self.data[i] for i in indices], self.pad_token_id) for indices in self.batches
                ]
            for batch in self.collated:
                count = float(
                    (batch["labels"][:, 1:] != IGNORE_INDEX).sum()
                )  # the tokens the shifted loss averages over
                total += llava_loss(engine, batch, self.device, self.dtype).item() * count
                tokens += count
        engine.train()
        return {"eval/loss": total / max(tokens, 1.0)}


def _by_modality(data: ConversationData, batch_size: int) -> list[list[int]]:
    groups = [[i for i in range(len(data)) if data.has_image(i) == image] for image in (True, False)]
    return [group[j : j + batch_size] for group in groups for j in range(0, len(group), batch_size)]


def conversation_data(
    cfg: LlavaTrainConfig, stage: str, processor, records: list[dict], image_folder: Path
) -> ConversationData:
    settings = cfg.pretrain_data if stage == "pretrain" else cfg.finetune_data
    layout = vision_layout(cfg.tower, cfg.feature_layer)
    template = "plain" if stage == "pretrain" else "vicuna_v1"
    return ConversationData(
        records,
        image_folder,
        processor,
        template,
        layout.image_seq_length,
        settings.model_max_length,
        settings.image_aspect_ratio,
    )


def run_llava(cfg: LlavaTrainConfig, stage: str, allow_config_change: bool = False, overwrite: bool = False) -> Path:
    """Train one stage (resuming if interrupted, with the settings it started with unless
    ``allow_config_change``); after finetune, export the llava-hf model. A stage made from other
    inputs (or, finished, with other settings) is refused unless ``overwrite``.

    Args:
        cfg: the LLaVA training config (tower, language model, data, both stages' settings).
        stage: pretrain (returns its stage directory) or finetune (returns the exported ``OUTPUT/model``).
        allow_config_change: resume with settings that change training, instead of refusing them.
        overwrite: remove the stage's output (and finetune's and the export, after pretrain) and train it again.
    """
    validate(cfg, stage)
    output_dir = Path(cfg.output_dir).resolve()
    stage_dir = output_dir / stage
    model_dir = output_dir / "model"
    trained = [output_dir / "pretrain", output_dir / "finetune"]
    train_cfg = cfg.pretrain if stage == "pretrain" else cfg.finetune
    record = stage_record(cfg, stage)
    if not overwrite:  # before anything is written or built
        freshness.check_stage(stage_dir, record, is_finished(stage_dir) and not allow_config_change)
    if stage == "finetune":  # it builds on the pretrained projector: made from this config's inputs too
        pretrain = stage_record(cfg, "pretrain")
        freshness.check_stage(output_dir / "pretrain", pretrain, False, "run llava-pretrain --overwrite")
    dist_info = init_distributed()
    if overwrite and dist_info.is_main:
        overwrite_stage(output_dir, stage)
    barrier()
    json_path, image_folder = conversation_files(cfg, stage, dist_info.is_main)
    settings = cfg.pretrain_data if stage == "pretrain" else cfg.finetune_data
    records, held_out = held_out_split(read_records(json_path), settings.eval_share, HELD_OUT_SEED)
    train_cfg.max_steps = stage_steps(cfg, stage, records, dist_info.world_size)
    if is_finished(stage_dir, train_cfg.max_steps) and (stage == "pretrain" or export_is_current(model_dir, trained)):
        if dist_info.is_main:
            logger.info(f"stage {stage}: already finished in {stage_dir}; nothing to do")
        return model_dir if stage == "finetune" else stage_dir
    if stage == "finetune" and cfg.lora.enabled:
        train_cfg.group_lrs = {PROJECTOR: cfg.lora.projector_lr, **train_cfg.group_lrs}

    if not is_finished(stage_dir, train_cfg.max_steps):
        model, processor = build_for_stage(cfg, stage)
        data = conversation_data(cfg, stage, processor, records, image_folder)
        plan = GroupedBatches(
            data,
            train_cfg.micro_batch_size,
            dist_info.rank,
            dist_info.world_size,
            cfg.seed,
            processor.tokenizer.pad_token_id,
            settings.group_by_length,
            train_cfg.grad_accum,
        )
        trainer = Trainer(
            model.to(dist_info.device),
            train_cfg,
            stage_dir,
            cfg.seed,
            dist_info,
            shaping_config(cfg, stage),
            allow_config_change,
        )
        if dist_info.is_main:  # before the first checkpoint: an interrupted stage knows what it was made from
            freshness.mark_current(stage_dir, record)
        batches = ResumableBatches(plan, None, None, train_cfg.num_workers)
        dtype = next(model.parameters()).dtype

        def step(engine, batch, generator):
            loss = llava_loss(engine, batch, dist_info.device, dtype)
            return loss, {"loss": loss.item(), "skipped_records": float(batch["skipped"])}

        held_out_loss = None
        if held_out:
            held_data = conversation_data(cfg, stage, processor, held_out, image_folder)
            held_out_loss = HeldOutLoss(
                held_data,
                train_cfg.micro_batch_size,
                processor.tokenizer.pad_token_id,
                settings.eval_every,
                dist_info.device,
                dtype,
            )
        trainer.fit(batches, step, after_step=held_out_loss)
        del trainer, model

    if stage == "pretrain":
        return stage_dir
    if dist_info.is_main:
        from dcr_mllm.llava.train.export import export_llava

        build_once(model_dir, export_fingerprint(trained), lambda tmp: export_llava(cfg, tmp))
    barrier()
    return model_dir
