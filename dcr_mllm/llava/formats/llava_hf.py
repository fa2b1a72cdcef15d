"""``LlavaForConditionalGeneration`` checkpoints (llava-hf). The tower's tensors are found under
``vision_tower.vision_model.*`` (hub checkpoints, transformers 4), ``model.vision_tower.vision_model.*``
(transformers 4.52-4.57) or ``vision_tower.*`` (transformers 5 writes a CLIP/SigLIP tower without its
``vision_model`` level); ``vision_config`` and the image processor follow the tower
(``processor_updates``). The result is checked by loading it with transformers on the meta device;
importing Llava takes seconds of CPU, more than copying a few GB, so it runs on a thread while the
shards are copied (copies and hashing release the GIL); see bench/README.md for times."""

from __future__ import annotations

import contextlib
import importlib
import json
import threading
from dataclasses import MISSING, fields
from pathlib import Path

from dcr_mllm.errors import DcrError
from dcr_mllm.llava.checkpoint import BOOKKEEPING, FAMILY_OF_VISION_TYPE, Checkpoint, Tower, read_json_object, with_defaults
from dcr_mllm.llava.compat import tensor_problems, vision_config_problems
from dcr_mllm.llava.formats.base import Changes, CheckpointFormat, Fit
from dcr_mllm.towers.hf import quiet_transformers

PREFIXES = ("model.vision_tower.", "vision_tower.")
#: vision-config keys that stay the checkpoint's: its structure, or fields no forward pass reads
VISION_KEEP = BOOKKEEPING | {"model_type", "vision_use_head", "projection_dim", "initializer_range", "initializer_factor", "vocab_size"}
#: image-processor fields that follow the tower when the family stays the same
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")


def llava_defaults(values: dict) -> dict:
    """A llava-hf config's own fields completed with LlavaConfig's defaults, read from its dataclass
    fields: building one would build a Llama config too, whose import takes seconds."""
    from transformers import LlavaConfig

    return {**{f.name: f.default for f in fields(LlavaConfig) if f.default is not MISSING}, **values}


class LlavaHf(CheckpointFormat):
    """``LlavaForConditionalGeneration`` checkpoints: the tower lives in the shards and ``vision_config``."""

    name, prefixes, needs_safetensors = "llava-hf", PREFIXES, True

    def holds(self, config: dict) -> bool:
        return config.get("model_type") == "llava" and "vision_config" in config

    def check(self, checkpoint: Checkpoint, tower: Tower, allow_family_change: bool) -> Fit:
        config = llava_defaults({k: v for k, v in checkpoint.config.items() if k not in ("vision_config", "text_config")})
        vision = checkpoint.config["vision_config"]
        family = FAMILY_OF_VISION_TYPE.get(vision.get("model_type"))
        if family is None:
            return Fit([f"the checkpoint's vision tower is {vision.get('model_type')!r}, not CLIP or SigLIP"])
        if not checkpoint.tower_keys():
            return Fit(["the checkpoint stores no vision_tower.* tensors"])
        spec = tower.spec
        fit = Fit(vision_config_problems(with_defaults(vision["model_type"], vision), config["vision_feature_layer"], spec))
        fit.family_change = family != spec.family
        if fit.family_change:
            tokens = f"checkpoint {family} ({config['image_seq_length']} image tokens), tower {spec.family} ({spec.num_patches} image tokens)"
            if allow_family_change:
                fit.notes.append(f"warning: {tokens}: the projector was trained on {family} features and must be retrained")
            else:
                fit.problems.append(f"family: {tokens}; pass --allow-family-change to swap anyway, then retrain the projector")
        elif not fit.problems:
            fit.problems += tensor_problems(checkpoint, tower)
        return fit

    def changes(self, checkpoint: Checkpoint, tower: Tower, dst: Path, family_change: bool) -> Changes:
        config, lines = _llava_hf_config(checkpoint, tower, family_change)
        json_files, processor_lines = processor_updates(checkpoint, tower, family_change)
        return Changes(config, json_files, lines + processor_lines)

    def before_write(self) -> None:
        _import_llava_in_background()  # ready by the load check, which follows the copy

    def verify_extra(self, tower: Tower, out: Path) -> str:
        return load_check(out)


def processor_updates(checkpoint: Checkpoint, tower: Tower, family_change: bool) -> tuple[dict[str, dict], list[str]]:
    """The checkpoint's image-processor files rewritten to a ``LlavaImageProcessor`` that preprocesses
    as the tower does, after LLaVA's ``pad`` aspect (the checkpoint's ``do_pad`` kept where it says,
    else on, as LLaVA-1.5 trains); across families the token layout too. ``({file name: new
    content}, summary lines)``. The one place that decides a swapped llava-hf checkpoint's processor."""
    from dcr_mllm.llava.build import llava_image_processor

    spec = tower.spec
    source = tower.image_processor or {"image_mean": list(spec.mean), "image_std": list(spec.std), "do_center_crop": True,
                                       "size": {"shortest_edge": spec.image_size},
                                       "crop_size": {"height": spec.image_size, "width": spec.image_size}}
    files, changes = {}, []
    for name in PROCESSOR_FILES:
        path = checkpoint.path / name
        if not path.is_file():
            continue
        data = read_json_object(path)
        before = len(changes)
        nested = name == "processor_config.json"
        if nested and family_change:
            layout = {"vision_feature_select_strategy": "default" if spec.has_cls else "full",
                      "num_additional_image_tokens": 1 if spec.has_cls else 0, "patch_size": spec.patch_size}
            for key, value in layout.items():
                if data.get(key) != value:
                    changes.append(f"{name} {key}: {data.get(key)} -> {value}")
                    data[key] = value
        target = data.get("image_processor") if nested else data
        if isinstance(target, dict):
            replacement = llava_image_processor(source, do_pad=target.get("do_pad", True)).to_dict()
            replacement.pop("processor_class", None)
            for key in sorted(set(target) | set(replacement)):
                if key != "processor_class" and target.get(key) != replacement.get(key):
                    changes.append(f"{name} {key}: {target.get(key)} -> {replacement.get(key)}")
            if len(changes) > before:
                processor_class = target.get("processor_class")
                target.clear()
                target.update(replacement)
                if processor_class:
                    target["processor_class"] = processor_class
        if len(changes) > before:
            files[name] = data
    return files, changes


def _llava_hf_config(checkpoint: Checkpoint, tower: Tower, family_change: bool) -> tuple[dict, list[str]]:
    config = json.loads(json.dumps(checkpoint.config))
    old = config["vision_config"]
    changes = []
    if family_change:
        spec = tower.spec
        config["vision_config"] = dict(tower.vision_config)
        changes.append(f"vision_config: {old.get('model_type')} -> {tower.vision_config['model_type']} (the tower's)")
        layout = {"vision_feature_select_strategy": "default" if spec.has_cls else "full", "image_seq_length": spec.num_patches}
        for key, value in layout.items():
            if config.get(key) != value:
                changes.append(f"{key}: {config.get(key)} -> {value}")
                config[key] = value
        return config, changes
    full_old = with_defaults(old["model_type"], old)
    for key, value in tower.vision_config.items():
        if key not in VISION_KEEP and full_old.get(key) != value:
            changes.append(f"vision_config.{key}: {full_old.get(key)} -> {value}")
            config["vision_config"][key] = value
    return config, changes



def _import_llava_in_background() -> None:
    """Start importing transformers' Llava, for ``load_check``, on a daemon thread.

    Only for while the main thread does I/O: it must not import transformers modules meanwhile.
    ``load_check``'s own import then waits for this one (an import lock), or repeats it, raising,
    if it failed.
    """

    def run() -> None:
        with contextlib.suppress(Exception):  # load_check repeats a failed import and reports it
            importlib.import_module("transformers.models.llava.modeling_llava")

    threading.Thread(target=run, name="import-llava", daemon=True).start()


def load_check(directory: Path) -> str:
    """Load a llava-hf directory with transformers on the meta device: config, every key and shape, no data."""
    from transformers import LlavaForConditionalGeneration

    try:
        with quiet_transformers():
            _, info = LlavaForConditionalGeneration.from_pretrained(directory, device_map="meta", output_loading_info=True)
    except Exception as err:  # transformers raises plain exceptions with multi-line reports
        raise DcrError(f"verification failed: LlavaForConditionalGeneration cannot load the result ({str(err).splitlines()[0]})") from err
    bad = {kind: keys for kind, keys in info.items() if keys}
    if bad:
        kind, keys = next(iter(bad.items()))
        raise DcrError(f"verification failed: LlavaForConditionalGeneration reports {len(keys)} {kind.replace('_', ' ')}, e.g. {min(map(str, keys))}")
    return "LlavaForConditionalGeneration.from_pretrained accepts every key and shape (meta device)"
