"""Stage-one config: which tower, which denoiser, the objective, the data and both stages.

``validate`` checks everything that can be checked from config files alone — paths, tower
and UNet widths against the projector — so a bad config fails in a second, before any model
is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from dcr_mllm.diffusion.denoiser import check_sd_dir, context_length, unet_cross_attention_dim
from dcr_mllm.diffusion.projector import check_widths
from dcr_mllm.errors import ConfigError, DcrError
from dcr_mllm.objectives.settings import DcrSettings, ObjectiveConfig
from dcr_mllm.towers import TowerSpec, inspect_tower
from dcr_mllm.towers.lora import LoraSettings
from dcr_mllm.training.config import TrainConfig, resolve_train_config

STAGES = ("projector", "lora")


@dataclass
class ProjectorSettings:
    input_dim: int = 0  # 0 = the tower's global-embedding width
    output_dim: int = 0  # 0 = the UNet's cross-attention width
    hidden_dim: int = 0  # 0 = output_dim


@dataclass
class DataSettings:
    #: tar shards (img2dataset layout): a directory, a file, or a brace pattern; empty = synthetic
    shards: str = ""
    image_size: int = 0  # decode size; 0 = the tower's resolution
    synthetic_samples: int = 256
    synthetic_shards: int = 8
    #: the image every view starts from: a centre crop, or a random resized crop of crop_scale/crop_ratio
    base_view: Literal["center_crop", "random_resized_crop"] = "center_crop"
    crop_scale: list[float] = field(default_factory=lambda: [0.9, 1.0])
    crop_ratio: list[float] = field(default_factory=lambda: [3 / 4, 4 / 3])
    #: tower: the tower's own mean/std; openai_clip: OpenAI CLIP's for every tower
    normalization: Literal["tower", "openai_clip"] = "tower"


@dataclass
class EvalBenchmark:
    name: Literal["world", "mmvp-vlm", "classification"] = "world"
    data: str = ""  # world: a labelled folder (make-eval-data world); mmvp-vlm: the benchmark folder; classification: an image folder
    pairs_per_attribute: int = 30  # world only


@dataclass
class EvalSettings:
    """The tower evaluated while the LoRA stage trains (``dcr_mllm.enhance.watch``)."""

    every: int = 0  # LoRA steps between evaluations; 0: none during training
    at_start: bool = True  # also at step 0: the base tower, the line every curve is read against
    benchmarks: list[EvalBenchmark] = field(default_factory=list)
    #: "<benchmark>/<metric>" (e.g. world/probe_global/fine_mean): export the evaluated step where it is
    #: highest, not the last; its benchmark's data is the selection split and must not be test data
    select: str = ""
    test_data: list[str] = field(default_factory=list)  # folders the final report is measured on
    allow_test_selection: bool = False  # select on test data anyway; the model card says so


@dataclass
class EnhanceConfig:
    tower: str  # a tower directory or a preset name
    denoiser: str  # a Stable Diffusion (diffusers layout) directory or a preset name
    output_dir: str = "outputs/enhance"
    seed: int = 0
    stages: list[Literal["projector", "lora"]] = field(default_factory=lambda: list(STAGES))
    #: the objective by name (dcr, reconstruction, naive), with the settings it reads (objectives/settings.py)
    objective: ObjectiveConfig = field(default_factory=DcrSettings)
    projector: ProjectorSettings = field(default_factory=ProjectorSettings)
    lora: LoraSettings = field(default_factory=LoraSettings)
    data: DataSettings = field(default_factory=DataSettings)
    projector_stage: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-4))
    lora_stage: TrainConfig = field(default_factory=lambda: TrainConfig(lr=1e-5))
    eval: EvalSettings = field(default_factory=EvalSettings)


@dataclass(frozen=True)
class ResolvedShapes:
    tower: TowerSpec
    unet_width: int
    projector_input: int
    projector_output: int


def resolve_config(cfg: EnhanceConfig) -> EnhanceConfig:
    """Check the values and settle each stage's ZeRO stage, reading nothing but DeepSpeed JSONs.

    Stage one streams shards of unknown length and never checkpoints activations of the
    tower, so ``epochs`` and ``gradient_checkpointing`` would be silently ignored: refused.
    """
    for name in ("projector_stage", "lora_stage"):
        stage = resolve_train_config(getattr(cfg, name), name, default_zero_stage=2)
        if stage.epochs:
            raise ConfigError(
                f"{name}.epochs is not read by stage one (its shards have no known length); set {name}.max_steps"
            )
        if stage.gradient_checkpointing:
            raise ConfigError(
                f"{name}.gradient_checkpointing is not read by stage one; bound memory with objective.chunk_size"
            )
    cfg.objective.check()
    if cfg.lora.r < 1 or cfg.lora.alpha <= 0 or not 0 <= cfg.lora.dropout < 1:
        raise ConfigError(
            f"lora needs r >= 1, alpha > 0 and dropout in [0, 1); got r={cfg.lora.r}, alpha={cfg.lora.alpha}, dropout={cfg.lora.dropout}"
        )
    if cfg.data.synthetic_samples < 1 or cfg.data.synthetic_shards < 1:
        raise ConfigError("data.synthetic_samples and data.synthetic_shards must be at least 1")
    if cfg.eval.every < 0:
        raise ConfigError(
            f"eval.every must be 0 (no evaluation during training) or a number of LoRA steps, got {cfg.eval.every}"
        )
    if cfg.eval.every and not cfg.eval.benchmarks:
        raise ConfigError(
            "eval.every is set but eval.benchmarks is empty; name at least one, e.g. {name: world, data: outputs/world/val}"
        )
    if cfg.eval.benchmarks and not cfg.eval.every:
        raise ConfigError("eval.benchmarks are read only with eval.every > 0; set eval.every or remove them")
    names = [bench.name for bench in cfg.eval.benchmarks]
    if len(set(names)) != len(names):
        raise ConfigError(
            f"eval.benchmarks names {names}: each benchmark once (the metrics are named eval/<benchmark>/...)"
        )
    if cfg.eval.select and cfg.eval.select.split("/")[0] not in names:
        raise ConfigError(
            f"eval.select={cfg.eval.select}: start it with an evaluated benchmark ({', '.join(names) or 'none'}), "
            "e.g. world/probe_global/fine_mean"
        )
    if (cfg.eval.test_data or cfg.eval.allow_test_selection) and not cfg.eval.select:
        raise ConfigError("eval.test_data and eval.allow_test_selection are read only with eval.select")
    for index, bench in enumerate(cfg.eval.benchmarks):
        if not bench.data:
            raise ConfigError(f"eval.benchmarks[{index}] ({bench.name}) needs data: the folder to evaluate on")
        if bench.name != "world" and bench.pairs_per_attribute != EvalBenchmark().pairs_per_attribute:
            raise ConfigError(f"eval.benchmarks[{index}].pairs_per_attribute is read only by the world benchmark")
    scale, ratio = cfg.data.crop_scale, cfg.data.crop_ratio
    if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1 or len(ratio) != 2 or not 0 < ratio[0] <= ratio[1]:
        raise ConfigError(
            f"data.crop_scale must be [low, high] within (0, 1] and data.crop_ratio [low, high] above 0; got {scale} and {ratio}"
        )
    return cfg


def check_condition_tokens(objective, tower, context: int) -> None:
    """Token conditions must fit the UNet's context one to one, from a layer the tower has."""
    keep, layer = objective.condition_tokens, objective.condition_layer
    if keep < 0:
        raise ConfigError(
            f"objective.condition_tokens={keep}: give a number of patches per image, or 0 for all of them"
        )
    if not -tower.num_layers <= layer <= tower.num_layers:
        raise ConfigError(
            f"objective.condition_layer={layer}: the tower has hidden layers -{tower.num_layers}..{tower.num_layers}"
        )
    count = min(keep or tower.num_patches, tower.num_patches)
    if count > context:
        raise ConfigError(
            f"objective.condition_tokens={keep} gives {count} tokens per image, more than the denoiser's {context} "
            f"context tokens; set objective.condition_tokens to at most {context}"
        )


def selection_on_test_data(cfg: EnhanceConfig) -> str:
    """Why the selection split is test data ("" when it is not): MMVP-VLM is a test set, a folder
    named in ``eval.test_data``, or the world's tower evaluation set (its recorded seed)."""
    from dcr_mllm.io import generated_from
    from dcr_mllm.world.prepare import EVAL_SEED

    if not cfg.eval.select:
        return ""
    bench = next(b for b in cfg.eval.benchmarks if b.name == cfg.eval.select.split("/")[0])
    record = generated_from(bench.data) or {}
    if bench.name == "mmvp-vlm":
        return "MMVP-VLM, a test set"
    if Path(bench.data).resolve() in {Path(d).resolve() for d in cfg.eval.test_data}:
        return f"{bench.data}, listed in eval.test_data"
    if record.get("generator") == "world-labelled" and record.get("seed") == EVAL_SEED:
        return f"{bench.data}, the world's tower evaluation set (seed {EVAL_SEED}, what stage 4 reports)"
    return ""


def validate(cfg: EnhanceConfig) -> ResolvedShapes:
    """Check values, paths and widths from config files only; returns the resolved projector shape."""
    from dcr_mllm.data.images import check_shards
    from dcr_mllm.evaluation.tower.run import benchmark_scorer
    from dcr_mllm.presets.real import local_path

    resolve_config(cfg)
    tower = inspect_tower(cfg.tower)
    unet_width = unet_cross_attention_dim(check_sd_dir(local_path(cfg.denoiser)))
    tokens = cfg.objective.condition == "tokens"
    feature_width = tower.hidden_size if tokens else tower.global_dim
    projector_input = cfg.projector.input_dim or feature_width
    projector_output = cfg.projector.output_dim or unet_width
    check_widths(
        feature_width, projector_input, projector_output, unet_width, "patch token" if tokens else "global embedding"
    )
    if tokens:
        check_condition_tokens(cfg.objective, tower, context_length(local_path(cfg.denoiser)))
    if cfg.data.shards:
        check_shards(cfg.data.shards)
    test = selection_on_test_data(cfg)
    if test and not cfg.eval.allow_test_selection:
        raise ConfigError(
            f"eval.select={cfg.eval.select} would choose the exported step on {test}; select on a validation folder "
            "(build-world writes outputs/world/val) or set eval.allow_test_selection=true (the model card says so)"
        )
    for bench in cfg.eval.benchmarks:
        if not Path(bench.data).is_dir():
            raise DcrError(f"eval benchmark {bench.name}: data folder {bench.data} does not exist")
        # its data read and checked now, not at the first evaluation
        benchmark_scorer(bench.name, bench.data, pairs_per_attribute=bench.pairs_per_attribute)
    return ResolvedShapes(tower, unet_width, projector_input, projector_output)
