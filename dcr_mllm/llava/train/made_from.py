"""What a stage-two stage is made from (``evaluation.freshness``'s record, ``made_from.json`` in its
folder): a finished stage is reused, and an interrupted one resumed, only when made from the same
tower, language model and data (and, finetune, the same pretrained projector); ``--overwrite``
removes a stage's output and what depends on it. ``cfg`` is a ``recipe.LlavaTrainConfig``."""

from __future__ import annotations

from pathlib import Path

from dcr_mllm.config import to_dict
from dcr_mllm.evaluation import freshness
from dcr_mllm.training.checkpoints import TRAINING_KEYS
from dcr_mllm.training.export_marker import training_digests


def shaping_config(cfg, stage: str) -> dict:
    """The config's values that shape the stage's training (beside its TrainConfig): what a resume
    must match, and part of what the stage records it was made from."""
    shaping = ("tower", "language_model", "feature_layer", "synthetic_images", f"{stage}_data") + (
        ("lora",) if stage == "finetune" else ()
    )
    run_config = {key: value for key, value in to_dict(cfg).items() if key in shaping}
    run_config[f"{stage}_data"].pop("eval_every")  # how often the held-out loss is taken does not change training
    return run_config


def stage_record(cfg, stage: str) -> dict:
    """What the stage is made from (``freshness.made_from``): its settings (those of a resume's check
    but ``max_steps``, which a finished stage may raise to continue) and its inputs' fingerprints:
    the tower, the language model, the conversation data and, for finetune, the pretrained weights."""
    train_cfg = cfg.pretrain if stage == "pretrain" else cfg.finetune
    settings = {
        key: value for key, value in shaping_config(cfg, stage).items() if key not in ("tower", "language_model")
    }
    settings.update({key: getattr(train_cfg, key) for key in TRAINING_KEYS if key != "max_steps"}, seed=cfg.seed)
    data = cfg.pretrain_data if stage == "pretrain" else cfg.finetune_data
    return {
        "settings": freshness.made_from(settings, {})["settings"],
        "inputs": {
            "tower": freshness.fingerprint(cfg.tower),
            "language model": freshness.fingerprint(cfg.language_model),
            **({"data": freshness.data_fingerprint([data.json, data.image_folder])} if data.json else {}),
            **(training_digests([Path(cfg.output_dir) / "pretrain"]) if stage == "finetune" else {}),
        },
    }


def overwrite_stage(output_dir: Path, stage: str) -> None:
    """Remove the stage's output and what is made from it (finetune and the export, after pretrain)."""
    for name in ("pretrain", "finetune", "model")[("pretrain", "finetune").index(stage) :]:
        freshness.remove_stage(output_dir / name)
