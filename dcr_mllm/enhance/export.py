"""Export an enhanced tower: base tower + trained LoRA, merged, in the family's own format.

Every vision part is copied from the merged tower (encoder, SigLIP's pooling head, CLIP's
``visual_projection``), so adapters or biases trained outside the encoder reach the export too.

The result is a plain tower directory (no adapters, no dcr-mllm code needed) that
``CLIPModel``/``CLIPVisionModel``/``SiglipVisionModel.from_pretrained`` or open_clip's
``local-dir:`` load, and that LLaVA can use as its vision tower. It is written to a temporary
sibling directory and renamed, with a model card saying how it was made.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from safetensors import safe_open

from dcr_mllm.config import load_config, to_dict
from dcr_mllm.enhance.config import EnhanceConfig, selection_on_test_data
from dcr_mllm.enhance.merge import merged_tower
from dcr_mllm.enhance.watch import SELECTED
from dcr_mllm.errors import DcrError
from dcr_mllm.io import atomic_dir
from dcr_mllm.training import is_finished
from dcr_mllm.training.checkpoints import TRAINABLE, checkpoint_problem, read_trainable_state

MODEL_CARD = "README.md"  # the hub's model card: the export uploads as it is (`dcr-mllm push-tower`)
RUN_CONFIG = "config.yaml"  # the resolved config of the run's last `enhance` command, which export-tower reads


def export_tower(
    cfg: EnhanceConfig, out_dir: str | Path, selection: dict | None = None, step: int | None = None
) -> Path:
    """The last step's tower; with ``selection`` (``watch.selected``) the chosen step's; with
    ``step`` that kept checkpoint's (``step_weights``)."""
    out_dir = Path(out_dir)
    lora_dir = Path(cfg.output_dir) / "lora"
    if step is not None:
        weights, section = step_weights(lora_dir, step), step_card(step)
    elif selection is not None:
        weights, section = lora_dir / SELECTED, selection_card(cfg, selection)
    else:
        weights, section = lora_dir / TRAINABLE, ""
    tower, merged = merged_tower(cfg, read_trainable_state(weights, "tower."), source=str(weights))
    base_card = tower.source / MODEL_CARD if tower.source is not None else None
    metadata = card_metadata(cfg.tower, base_card.read_text() if base_card and base_card.is_file() else "")
    with atomic_dir(out_dir) as tmp:
        tower.save(tmp)  # copies the base's side files, its card too, which the next line replaces
        (tmp / MODEL_CARD).write_text(model_card(cfg, merged, lora_dir, section, metadata))
    return out_dir


def kept_steps(lora_dir: Path) -> dict[int, Path]:
    """``{step: trained parameters}`` of every LoRA step whose weights are on disk: intact
    checkpoints that hold them, the selected step, and the last step of a finished stage."""
    kept = {}
    for folder in sorted((lora_dir / "checkpoints").glob("step_*")):
        if (
            folder.is_dir()
            and (folder / TRAINABLE).is_file()
            and folder.name[5:].isdigit()
            and checkpoint_problem(folder, 1) is None
        ):
            kept[int(folder.name[5:])] = folder / TRAINABLE
    if (lora_dir / SELECTED).is_file():
        with safe_open(str(lora_dir / SELECTED), "pt") as f:
            kept[int(f.metadata()["step"])] = lora_dir / SELECTED
    if is_finished(lora_dir):
        kept[json.loads((lora_dir / "train_state.json").read_text())["step"]] = lora_dir / TRAINABLE
    return dict(sorted(kept.items()))


def step_weights(lora_dir: Path, step: int) -> Path:
    kept = kept_steps(lora_dir)
    if step not in kept:
        have = ", ".join(map(str, kept)) or "none"
        raise DcrError(
            f"step {step} is not kept in {lora_dir} (kept: {have}); lower lora_stage.save_every or raise keep_last to keep more steps"
        )
    return kept[step]


def export_step(run: str | Path, step: int, output: str | Path | None = None, force: bool = False) -> Path:
    """``dcr-mllm export-tower RUN --step N``: the tower of any kept LoRA step of a stage-one run
    (default ``RUN/tower_step_N``), made with the settings the run recorded in ``RUN/config.yaml``.

    Args:
        run: the run's ``output_dir``.
        step: a LoRA step whose checkpoint the run kept.
        output: the directory to write (default ``RUN/tower_step_N``).
        force: replace an existing output directory.
    """
    run = Path(run)
    recorded = run / RUN_CONFIG
    if not recorded.is_file():
        raise DcrError(f"{recorded} does not exist; RUN must be the output_dir of a `dcr-mllm enhance` run")
    cfg = load_config(EnhanceConfig, recorded, [f"output_dir={run}"])
    out = Path(output) if output else run / f"tower_step_{step}"
    if out.exists() and not force:
        raise DcrError(f"{out} exists; pass --force to replace it, or --output another directory")
    step_weights(run / "lora", step)  # before any model loads
    return export_tower(cfg, out, step=step)


def step_card(step: int) -> str:
    return f"## Exported step\n\nStep {step} of the LoRA stage, exported from its checkpoint with `dcr-mllm export-tower --step {step}`.\n\n"


def selection_card(cfg: EnhanceConfig, selection: dict) -> str:
    """Which step was exported and why, with every evaluated step's value."""
    bench = next(b for b in cfg.eval.benchmarks if b.name == cfg.eval.select.split("/")[0])
    test = selection_on_test_data(cfg)
    lines = [
        "## Exported step\n",
        f"Step {selection['step']} of the LoRA stage, the highest `{selection['metric']}` ({selection['value']:.2f}) among the "
        f"evaluated steps, on `{bench.data}`"
        + (
            f". **Chosen on test data** ({test}; eval.allow_test_selection): scores on it are optimistic."
            if test
            else ", a validation split."
        )
        + "\n",
        "| step | " + selection["metric"] + " |",
        "|---:|---:|",
    ]
    lines += [f"| {step} | {value:.2f} |" for step, value in sorted(selection["values"].items())]
    return "\n".join(lines) + "\n\n"


def model_card(
    cfg: EnhanceConfig, merged_layers: int, lora_dir: Path, exported_step: str = "", metadata: dict | None = None
) -> str:
    """The export's ``README.md``: the hub's metadata block, then the recipe, data and budget, the
    exported step, and the whole config.

    Args:
        cfg: the run's config.
        merged_layers: how many LoRA layers were merged into the tower.
        lora_dir: the LoRA stage's folder (its ``train_state.json`` gives the steps run).
        exported_step: the section saying which step was exported and why ("" for the last).
        metadata: the hub metadata (``card_metadata``); None writes none.
    """
    state = json.loads((lora_dir / "train_state.json").read_text())
    projector_state = json.loads((Path(cfg.output_dir) / "projector" / "train_state.json").read_text())
    tau = f"tau {cfg.objective.tau}, " if hasattr(cfg.objective, "tau") else ""  # DCR's temperature

    def budget(name: str, stage_state: dict) -> str:
        stage, steps, ranks = getattr(cfg, f"{name}_stage"), stage_state["step"], stage_state.get("world_size", 1)
        per_step = stage.micro_batch_size * stage.grad_accum * ranks
        return f"{steps} steps of {per_step} images ({steps * per_step} images), lr {stage.lr}"

    front = f"---\n{yaml.safe_dump(metadata, sort_keys=False)}---\n\n" if metadata else ""
    licence = (metadata or {}).get("license", "")
    return (
        front + f"# DCR-enhanced vision tower\n\n"
        f"- base tower: `{cfg.tower}`"
        + (
            f" (licence `{licence}`, which this tower keeps)"
            if licence and licence != "other"
            else " (its card declares no licence: the base's terms apply)"
        )
        + "\n"
        f"- denoiser: `{cfg.denoiser}`\n"
        f"- objective: `{cfg.objective.name}` ({tau}target `{cfg.objective.target}`)\n"
        f"- LoRA: r {cfg.lora.r}, alpha {cfg.lora.alpha}, scope {cfg.lora.scope}, bias {cfg.lora.bias}, "
        f"{merged_layers} layers merged\n"
        f"- budget: projector stage {budget('projector', projector_state)}; LoRA stage {budget('lora', state)}\n"
        f"- data: `{cfg.data.shards or 'synthetic (dcr-mllm generator)'}`\n"
        f"- seed: {cfg.seed}\n\n"
        f"Produced by `dcr-mllm enhance`. Load it with the tower family's own `from_pretrained`. Its scores, with "
        f"intervals, are added by `dcr-mllm push-tower --results` from `dcr-mllm eval-tower` reports.\n\n"
        + exported_step
        + f"## Config\n\n```yaml\n{yaml.safe_dump(to_dict(cfg), sort_keys=False)}```\n"
    )


def card_metadata(base: str, base_card: str) -> dict:
    """The hub's metadata block for a tower tuned from ``base``: the base's hub id where it is a preset,
    and the licence its own card declares (its terms carry over to the tuned weights; ``other`` where
    its card names none, so the reader looks)."""
    from dcr_mllm.presets.real import real_preset

    declared = front_matter(base_card).get("license")
    preset = real_preset(base)
    return {
        "library_name": "transformers",
        "license": declared if isinstance(declared, str) else "other",
        **({"base_model": preset.hub_id} if preset is not None else {}),
        "tags": ["vision", "dcr-mllm", "dcr"],
        "pipeline_tag": "zero-shot-image-classification",
    }


def front_matter(card: str) -> dict:
    """The YAML block a hub model card opens with (``---`` lines around it); {} where there is none."""
    lines = card.splitlines()
    if not lines or lines[0].strip() != "---" or "---" not in (line.strip() for line in lines[1:]):
        return {}
    end = next(i for i, line in enumerate(lines[1:], 1) if line.strip() == "---")
    try:
        data = yaml.safe_load("\n".join(lines[1:end]))
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}
