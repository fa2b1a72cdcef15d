"""``LlavaForConditionalGeneration`` checkpoints (llava-hf). The tower's tensors are found under
``vision_tower.vision_model.*`` (hub checkpoints, transformers 4), ``model.vision_tower.vision_model.*``
(transformers 4.52-4.57) or ``vision_tower.*`` (transformers 5 writes a CLIP/SigLIP tower without its
``vision_model`` level); ``vision_config`` and the image processor follow the tower
(``processor_updates``). LLaVA-NeXT and -OneVision (``llava_next``) store their tower the same way.
The result is checked by loading it with transformers on the meta device;
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
from dcr_mllm.llava.checkpoints.checkpoint import (
    BOOKKEEPING,
    Checkpoint,
    Tower,
    read_json_object,
    with_defaults,
)
from dcr_mllm.llava.checkpoints.compat import tensor_problems, tower_that_fits, vision_config_problems
from dcr_mllm.llava.checkpoints.formats.base import Changes, CheckpointFormat, Fit
from dcr_mllm.towers import TowerFamily, TowerSpec
from dcr_mllm.towers.hf import quiet_transformers
from dcr_mllm.towers.registry import FAMILIES, family_of_vision_type

PREFIXES = ("model.vision_tower.", "vision_tower.")
#: vision-config keys that stay the checkpoint's: its structure, or fields no forward pass reads
VISION_KEEP = BOOKKEEPING | {
    "model_type",
    "num_hidden_layers",  # a checkpoint may keep fewer layers than the tower (compat.depth_fit)
    "vision_use_head",
    "projection_dim",
    "initializer_range",
    "initializer_factor",
    "vocab_size",
}
#: image-processor fields that follow the tower when the family stays the same
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")


class LlavaHf(CheckpointFormat):
    """``LlavaForConditionalGeneration`` checkpoints: the tower lives in the shards and ``vision_config``.
    The llava-hf families differ in their config and model classes, the checks of their token layout
    and how their image processor follows the tower; subclasses (``llava_next``) say those."""

    name, prefixes, needs_safetensors = "llava-hf", PREFIXES, True
    model_type, architecture, config_class, label = "llava", "LlavaForConditionalGeneration", "LlavaConfig", "LLaVA-1.5"

    def holds(self, config: dict) -> bool:
        return config.get("model_type") == self.model_type and "vision_config" in config

    def defaults(self, config: dict) -> dict:
        """The config's own top-level fields completed with its class's defaults, read from the dataclass
        fields: building one would build a text config too, whose import takes seconds."""
        import transformers

        values = {k: v for k, v in config.items() if k not in ("vision_config", "text_config")}
        config_fields = fields(getattr(transformers, self.config_class))
        return {**{f.name: f.default for f in config_fields if f.default is not MISSING}, **values}

    def check(self, checkpoint: Checkpoint, tower: Tower, allow_family_change: bool) -> Fit:
        fit = self.config_fit(checkpoint.config, image_processor_of(checkpoint.path), tower, allow_family_change)
        if fit.problems:
            return fit
        if not checkpoint.tower_keys():
            return Fit(["the checkpoint stores no vision_tower.* tensors"])
        if not fit.family_change:
            fit.problems += tensor_problems(checkpoint, tower)
        return fit

    def config_fit(self, config: dict, image_processor: dict | None, tower: Tower, allow_family_change: bool) -> Fit:
        """What ``config.json`` and the image processor decide: shapes, feature layer, family, token
        layout. Separate from ``check`` for the dcr_llava plugin, which has a loaded model, not shards."""
        full = self.defaults(config)
        vision = config["vision_config"]
        family = family_of_vision_type(vision.get("model_type"))
        if family is None:
            known = ", ".join(f.vision_model_type for f in FAMILIES.values() if f.vision_model_type)
            return Fit(
                [f"the checkpoint's vision tower is {vision.get('model_type')!r}, not a tower family's ({known})"]
            )
        spec = tower.spec
        vision = with_defaults(vision["model_type"], vision)
        problems, notes = vision_config_problems(vision, full["vision_feature_layer"], spec)
        fit = Fit(problems, notes)
        fit.wants = tower_that_fits(
            family, vision["image_size"], vision["patch_size"], vision["hidden_size"], vision["num_hidden_layers"]
        )
        fit.family_change = vision["model_type"] != spec.family.vision_model_type
        depth_refused = any(p.startswith("layers:") for p in problems)
        if fit.family_change and vision["num_hidden_layers"] != spec.num_layers and not depth_refused:
            fit.problems.append(
                f"layers: checkpoint {vision['num_hidden_layers']}, tower {spec.num_layers}; a tower of another "
                f"family goes in whole, so it needs the checkpoint's {vision['num_hidden_layers']} layers"
            )
        if fit.family_change:
            self.family_fit(fit, full, family, spec, allow_family_change)
        else:
            fit.problems += self.layout_problems(full, image_processor, spec)
        return fit

    def family_fit(
        self, fit: Fit, config: dict, family: TowerFamily, spec: TowerSpec, allow_family_change: bool
    ) -> None:
        """A tower of the other family: refused, or (``allow_family_change``) a warning."""
        tokens = (
            f"checkpoint {family} ({config['image_seq_length']} image tokens), "
            f"tower {spec.family} ({spec.num_patches} image tokens)"
        )
        if allow_family_change:
            fit.notes.append(f"warning: {tokens}: the projector was trained on {family} features and must be retrained")
        else:
            fit.problems.append(
                f"family: {tokens}; swap with `dcr-mllm swap-tower --allow-family-change`, then retrain the projector"
            )

    def layout_problems(self, config: dict, image_processor: dict | None, spec: TowerSpec) -> list[str]:
        """Token-layout problems beyond the shape checks; LLaVA-1.5's one image grid has none."""
        return []

    def changes(self, checkpoint: Checkpoint, tower: Tower, dst: Path, family_change: bool) -> Changes:
        config, lines = _llava_hf_config(checkpoint, tower, family_change)
        json_files, processor_lines = self.processor_updates(checkpoint, tower, family_change)
        return Changes(config, json_files, lines + processor_lines)

    def before_write(self) -> None:
        # ready by the load check, which follows the copy
        _import_in_background(f"transformers.models.{self.model_type}.modeling_{self.model_type}")

    def verify_extra(self, tower: Tower, out: Path) -> str:
        return load_check(out, self.architecture)

    def image_processor(self, tower: Tower, current):
        """``current`` (a loaded image or video processor) as it must be for ``tower``: the dcr_llava
        plugin's counterpart of ``processor_updates``."""
        from dcr_mllm.llava.build import llava_image_processor

        return llava_image_processor(tower.path, do_pad=getattr(current, "do_pad", True))

    def processor_updates(
        self, checkpoint: Checkpoint, tower: Tower, family_change: bool
    ) -> tuple[dict[str, dict], list[str]]:
        """The checkpoint's image-processor files rewritten to a ``LlavaImageProcessor`` that preprocesses
        as the tower does, after LLaVA's ``pad`` aspect (the checkpoint's ``do_pad`` kept where it says,
        else on, as LLaVA-1.5 trains); across families the token layout too. ``({file name: new
        content}, summary lines)``. The one place that decides a swapped llava-hf checkpoint's processor."""
        from dcr_mllm.llava.build import llava_image_processor

        spec = tower.spec
        source = tower.image_processor or {
            "image_mean": list(spec.mean),
            "image_std": list(spec.std),
            "do_center_crop": True,
            "size": {"shortest_edge": spec.image_size},
            "crop_size": {"height": spec.image_size, "width": spec.image_size},
        }
        files, changes = {}, []
        for name in PROCESSOR_FILES:
            path = checkpoint.path / name
            if not path.is_file():
                continue
            data = read_json_object(path)
            before = len(changes)
            nested = name == "processor_config.json"
            if nested and family_change:
                layout = {
                    "vision_feature_select_strategy": "default" if spec.has_cls else "full",
                    "num_additional_image_tokens": 1 if spec.has_cls else 0,
                    "patch_size": spec.patch_size,
                }
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


def image_processor_of(directory: Path) -> dict | None:
    """A llava-hf directory's image-processor settings: ``processor_config.json``'s, else
    ``preprocessor_config.json``."""
    nested, alone = directory / "processor_config.json", directory / "preprocessor_config.json"
    if nested.is_file() and isinstance(read_json_object(nested).get("image_processor"), dict):
        return read_json_object(nested)["image_processor"]
    return read_json_object(alone) if alone.is_file() else None


def _llava_hf_config(checkpoint: Checkpoint, tower: Tower, family_change: bool) -> tuple[dict, list[str]]:
    config = json.loads(json.dumps(checkpoint.config))
    old = config["vision_config"]
    changes = []
    if family_change:
        spec = tower.spec
        config["vision_config"] = dict(tower.vision_config)
        changes.append(f"vision_config: {old.get('model_type')} -> {tower.vision_config['model_type']} (the tower's)")
        layout = {
            "vision_feature_select_strategy": "default" if spec.has_cls else "full",
            "image_seq_length": spec.num_patches,
        }
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


def _import_in_background(module: str) -> None:
    """Start importing a transformers modeling module, for ``load_check``, on a daemon thread.

    Only for while the main thread does I/O: it must not import transformers modules meanwhile.
    ``load_check``'s own import then waits for this one (an import lock), or repeats it, raising,
    if it failed.
    """

    def run() -> None:
        with contextlib.suppress(Exception):  # load_check repeats a failed import and reports it
            importlib.import_module(module)

    threading.Thread(target=run, name="import-llava", daemon=True).start()


def load_check(directory: Path, architecture: str = "LlavaForConditionalGeneration") -> str:
    """Load a llava-hf directory with transformers' ``architecture`` on the meta device: config, every key
    and shape, no data."""
    import transformers

    model_class = getattr(transformers, architecture)
    try:
        with quiet_transformers():
            _, info = model_class.from_pretrained(directory, device_map="meta", output_loading_info=True)
    except Exception as err:  # transformers raises plain exceptions with multi-line reports
        first = str(err).splitlines()[0]
        raise DcrError(f"verification failed: {architecture} cannot load the result ({first})") from err
    bad = {kind: keys for kind, keys in info.items() if keys}
    if bad:
        kind, keys = next(iter(bad.items()))
        raise DcrError(
            f"verification failed: {architecture} reports {len(keys)} {kind.replace('_', ' ')}, "
            f"e.g. {min(map(str, keys))}"
        )
    return f"{architecture}.from_pretrained accepts every key and shape (meta device)"
