"""Stage one: enhance a vision tower with DCR (or an ablation objective).

Two stages run in order, each through the training engine and each resumable on its own:

* ``projector`` trains only the projector (tower, UNet and VAE frozen); upstream: lr 1e-4;
* ``lora`` loads that projector, freezes it, and trains LoRA adapters on the tower's vision
  side; upstream: lr 1e-5, r 16, alpha 16, dropout 0.1, over the encoder *and* the projection or
  pooling head with their biases (``lora.scope: vision``, ``lora.bias: lora_only``).

``stages/configs/upstream/`` holds upstream's complete recipe per backbone.

Then ``export`` merges the adapters and writes ``output_dir/tower`` in the tower's own format.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from dcr_mllm.components.build_once import build_once
from dcr_mllm.config import config_yaml, to_dict
from dcr_mllm.data import ImageTextShards, collate_image_text, expand_shard_urls, write_synthetic_shards
from dcr_mllm.data.synthetic import VERSION as SYNTHETIC_VERSION
from dcr_mllm.diffusion import ConditionProjector, FrozenDenoiser
from dcr_mllm.enhance.config import EnhanceConfig, ResolvedShapes, validate
from dcr_mllm.enhance.export import RUN_CONFIG, export_tower
from dcr_mllm.enhance.watch import EVAL_FILE, TowerWatch, selected
from dcr_mllm.evaluation import freshness
from dcr_mllm.io import generated_dir, write_atomic
from dcr_mllm.normalization import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from dcr_mllm.objectives import EnhanceModel
from dcr_mllm.objectives.negatives import check_negative_count
from dcr_mllm.objectives.settings import DcrSettings
from dcr_mllm.presets.real import local_path
from dcr_mllm.towers import apply_lora, load_tower
from dcr_mllm.towers.lora import lora_module_names
from dcr_mllm.training import (
    ResumableBatches,
    Trainer,
    barrier,
    init_distributed,
    is_finished,
    load_trainable_state,
)
from dcr_mllm.training.checkpoints import TRAINING_KEYS
from dcr_mllm.training.export_marker import export_fingerprint, export_is_current, training_digests
from dcr_mllm.training.log import logger
from dcr_mllm.training.zero import zero3_config


def build_model(cfg: EnhanceConfig, shapes: ResolvedShapes, stage: str) -> EnhanceModel:
    """Tower + projector + frozen denoiser, with exactly the stage's parameters trainable; under
    ZeRO-3 the tower, UNet and VAE are built partitioned, so no rank holds them whole."""
    torch.manual_seed(cfg.seed)  # identical initialisation on every rank
    ds_config = zero3_config(cfg.projector_stage if stage == "projector" else cfg.lora_stage)
    tower = load_tower(cfg.tower, vision_only=True, ds_config=ds_config)
    if cfg.data.normalization == "openai_clip":
        tower.use_normalization(OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    denoiser = FrozenDenoiser.from_pretrained(
        local_path(cfg.denoiser), empty_prompt_mask=cfg.objective.empty_prompt_mask, ds_config=ds_config
    )
    projector = ConditionProjector(shapes.projector_input, shapes.projector_output, cfg.projector.hidden_dim or None)
    model = EnhanceModel(tower, projector, denoiser, cfg.objective)
    model.requires_grad_(False)
    if stage == "projector":
        projector.requires_grad_(True)
    else:
        load_trainable_state(model, Path(cfg.output_dir) / "projector" / "trainable.safetensors", prefix="")
        apply_lora(tower, cfg.lora)
    return model


def export_choice(cfg: EnhanceConfig, output_dir: Path) -> dict | None:
    """With ``eval.select``: the chosen step and what chose it (part of the export's marker, so a
    changed choice exports again); None exports the last step."""
    eval_file = output_dir / "lora" / EVAL_FILE
    if not cfg.eval.select or not eval_file.is_file():
        return None
    choice = selected(cfg, eval_file)
    return {
        "step": choice["step"],
        "metric": cfg.eval.select,
        "data": next(b.data for b in cfg.eval.benchmarks if b.name == cfg.eval.select.split("/")[0]),
    }


def stage_cfg(cfg: EnhanceConfig, stage: str):
    return cfg.projector_stage if stage == "projector" else cfg.lora_stage


def shaping_config(cfg: EnhanceConfig, stage: str) -> dict:
    """The config's values that shape the stage's training (beside its TrainConfig)."""
    shaping = ("tower", "denoiser", "objective", "projector", "data") + (("lora",) if stage == "lora" else ())
    return {key: value for key, value in to_dict(cfg).items() if key in shaping}


def stage_record(cfg: EnhanceConfig, stage: str) -> dict:
    """What the stage is made from (``freshness.made_from``, kept as ``made_from.json`` in its folder):
    its settings but ``max_steps`` (a finished stage may raise it to continue), and fingerprints of
    the tower, the denoiser, the shards (listed, not read) and, for lora, the trained projector."""
    settings = {key: value for key, value in shaping_config(cfg, stage).items() if key not in ("tower", "denoiser")}
    settings.update({key: getattr(stage_cfg(cfg, stage), key) for key in TRAINING_KEYS if key != "max_steps"})
    projector = Path(cfg.output_dir) / "projector"
    return {
        "settings": freshness.made_from({**settings, "seed": cfg.seed}, {})["settings"],
        "inputs": {
            "tower": freshness.fingerprint(cfg.tower),
            "denoiser": freshness.fingerprint(cfg.denoiser),
            **({"data": freshness.data_fingerprint(expand_shard_urls(cfg.data.shards))} if cfg.data.shards else {}),
            **(training_digests([projector]) if stage == "lora" and is_finished(projector) else {}),
        },
    }


def overwrite_stages(output_dir: Path, stages: list[str]) -> None:
    """Remove the stages' output and what is made from it (lora and the exports, after projector)."""
    first = min(("projector", "lora").index(stage) for stage in stages)
    for path in [output_dir / s for s in ("projector", "lora")[first:]] + [output_dir / "tower"]:
        freshness.remove_stage(path)
    for path in output_dir.glob("tower_step_*"):
        freshness.remove_stage(path)


def training_shards(cfg: EnhanceConfig, image_size: int, is_main: bool) -> str:
    """The configured shards, or a synthetic set written once under output_dir/data."""
    if cfg.data.shards:
        return cfg.data.shards
    out = Path(cfg.output_dir) / "data"
    if is_main:
        per_shard = math.ceil(cfg.data.synthetic_samples / cfg.data.synthetic_shards)
        recipe = {
            "generator": "synthetic-shards",
            "version": SYNTHETIC_VERSION,
            "count": cfg.data.synthetic_samples,
            "samples_per_shard": per_shard,
            "image_size": image_size,
            "seed": cfg.seed,
        }
        generated_dir(
            out,
            recipe,
            lambda tmp: write_synthetic_shards(
                tmp, cfg.data.synthetic_samples, samples_per_shard=per_shard, image_size=image_size, seed=cfg.seed
            ),
        )
    barrier()
    return str(out)


def run_enhance(
    cfg: EnhanceConfig, stages: list[str] | None = None, allow_config_change: bool = False, overwrite: bool = False
) -> Path | None:
    """Run the requested stages (default: the config's), then export; returns the tower path, if any.
    A stage resumes only with the settings it was started with, unless ``allow_config_change``; one
    made from other inputs (or, finished, with other settings) is refused unless ``overwrite``.

    Args:
        cfg: the resolved stage-one config.
        stages: the stages to run, ``projector`` and/or ``lora`` (default: ``cfg.stages``).
        allow_config_change: resume from checkpoints made with other training settings.
        overwrite: remove the stages' output (and what is made from it) and train them again.
    """
    shapes = validate(cfg)
    output_dir = Path(cfg.output_dir).resolve()
    stages = stages or list(cfg.stages)
    tower_dir = output_dir / "tower"
    if overwrite:
        if init_distributed().is_main:
            overwrite_stages(output_dir, stages)
        barrier()
    for stage in ("projector", "lora"):  # before anything is written or built; lora builds on the projector
        finished = stage in stages and is_finished(output_dir / stage) and not allow_config_change
        rerun = "pass --overwrite" if stage in stages else f"run enhance --stage {stage} --overwrite"
        freshness.check_stage(output_dir / stage, stage_record(cfg, stage), finished, rerun)
    if all(is_finished(output_dir / s, stage_cfg(cfg, s).max_steps) for s in stages) and export_is_current(
        tower_dir, [output_dir / "lora"], export_choice(cfg, output_dir)
    ):
        logger.info(f"stages {', '.join(stages)}: already finished in {output_dir}; nothing to do")
        return tower_dir
    if "lora" in stages:  # a LoRA target that matches nothing must fail now, not after stage one's first half
        lora_module_names(load_tower(cfg.tower, vision_only=True), cfg.lora.targets or None, cfg.lora.scope)
    dist_info = init_distributed()
    objective = cfg.objective
    if isinstance(objective, DcrSettings) and objective.negatives == "global":  # the global batch is known only now
        for stage in stages:  # still before any model is built
            check_negative_count(objective.num_negatives, dist_info.world_size * stage_cfg(cfg, stage).micro_batch_size)
    if dist_info.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(
            output_dir / RUN_CONFIG, config_yaml(cfg)
        )  # what `export-tower RUN --step N` rebuilds the tower with
    image_size = cfg.data.image_size or shapes.tower.image_size
    shards = training_shards(cfg, image_size, dist_info.is_main)

    for stage in stages:
        stage_dir = output_dir / stage
        train_cfg = stage_cfg(cfg, stage)
        if is_finished(stage_dir, train_cfg.max_steps):
            if dist_info.is_main:
                logger.info(f"stage {stage}: already finished in {stage_dir}; skipping")
            continue
        record = stage_record(cfg, stage)  # lora's: with the projector just trained
        freshness.check_stage(stage_dir, record, False)
        model = build_model(cfg, shapes, stage).to(dist_info.device)
        trainer = Trainer(
            model,
            train_cfg,
            stage_dir,
            cfg.seed,
            dist_info,
            shaping_config(cfg, stage),
            allow_config_change,
            weights_in_checkpoints=stage == "lora",
        )
        if dist_info.is_main:  # before the first checkpoint: an interrupted stage knows what it was made from
            freshness.mark_current(stage_dir, record)
        random_crop = (
            (tuple(cfg.data.crop_scale), tuple(cfg.data.crop_ratio))
            if cfg.data.base_view == "random_resized_crop"
            else None
        )
        dataset = ImageTextShards(
            shards,
            image_size,
            rank=dist_info.rank,
            world_size=dist_info.world_size,
            seed=cfg.seed,
            random_crop=random_crop,
        )
        batches = ResumableBatches(dataset, train_cfg.micro_batch_size, collate_image_text, train_cfg.num_workers)
        seen_log = stage_dir / "samples" / f"rank{dist_info.rank}.txt"
        seen_log.parent.mkdir(parents=True, exist_ok=True)

        def step(engine, batch, generator):
            with open(seen_log, "a") as f:  # noqa: B023 - fit() runs within this iteration
                f.write("\n".join(batch["key"]) + "\n")
            loss, metrics = engine(batch["image"].to(dist_info.device), generator)
            metrics["skipped_images"] = float(batch["skipped"])
            return loss, metrics

        watch = TowerWatch(cfg, stage_dir, dist_info.is_main) if stage == "lora" and cfg.eval.every else None
        trainer.fit(batches, step, after_step=watch)
        if watch is not None:
            watch.finish()
        del trainer, model

    if not is_finished(output_dir / "lora"):
        return None  # only the projector stage has run so far: nothing to export yet
    choice = export_choice(cfg, output_dir)
    if dist_info.is_main:
        selection = selected(cfg, output_dir / "lora" / EVAL_FILE) if choice else None
        build_once(
            tower_dir, export_fingerprint([output_dir / "lora"], choice), lambda tmp: export_tower(cfg, tmp, selection)
        )
    barrier()
    return tower_dir
