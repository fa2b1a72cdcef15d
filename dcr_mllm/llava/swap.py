"""Swap a vision tower into an existing LLaVA checkpoint, shard by shard, and verify the result.

Users hold LLaVA checkpoints of tens of GB and want to try an enhanced tower in them without
retraining and without loading the model. Two checkpoint formats are understood, each a small
class that says where its tower is, what must fit and which files change:

- **llava-hf** (``LlavaHf``, ``LlavaForConditionalGeneration``). The tower's tensors are found under
  ``vision_tower.vision_model.*`` (hub checkpoints, transformers 4), ``model.vision_tower.vision_model.*``
  (transformers 4.52-4.57) or ``vision_tower.*`` (transformers 5 writes a CLIP/SigLIP tower without
  its ``vision_model`` level); they are replaced by the tower's ``vision_model.*`` tensors, cast to
  the checkpoint's dtype. The image processor takes the tower's normalisation and size
  (``processor_updates``).
- **original LLaVA** (``OriginalLlava``, ``mm_vision_tower`` in ``config.json``). The tower directory
  is copied to ``DST/vision_tower`` and ``mm_vision_tower`` points at it; tower tensors stored in the
  checkpoint (``model.vision_tower.vision_tower.*``) are replaced as above.

The core is shared: read (``read_checkpoint``, ``read_tower``), check (``shape_problems``,
``vision_config_problems``, ``feature_layer_problems``, also used by ``convert-llava`` and the
``dcr_llava`` lmms-eval model), plan (``plan_swap``), write (``write_plan``), verify (``verify``),
report (``SwapReport``). Every other tensor is copied as raw bytes (see ``shards``). The tower is
checked against the checkpoint before anything is written; DST is built under a temporary name,
verified, and only then renamed into place (``dcr_mllm.io.atomic_dir``), so a failure leaves
neither DST nor a temporary directory behind.

Verification reads DST back once and compares every tensor's digest with the one recorded while
writing it (for a copied tensor, SRC's). For llava-hf, transformers' Llava then loads DST on the
meta device. Importing it takes seconds of CPU, more than copying a few GB, so it runs on a thread
while the shards are copied (copies and hashing release the GIL); see bench/README.md for times.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import re
import shutil
import threading
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

import torch

from dcr_mllm.errors import DcrError
from dcr_mllm.io import atomic_dir, scratch_dir
from dcr_mllm.llava.shards import (
    DTYPES,
    INDEX_NAME,
    Cast,
    Source,
    StoredTensor,
    convert_pickled_checkpoint,
    describe,
    human_size,
    nbytes,
    numel,
    parallel,
    pickled_weight_files,
    read_header,
    same_bytes,
    same_file,
    weight_files,
    write_shard,
)
from dcr_mllm.towers import TowerSpec, inspect_tower, resolve_tower_path
from dcr_mllm.towers.hf import _quiet_transformers
from dcr_mllm.weights import PICKLE_SUFFIXES, check_model_dir, read_json, refuse_pickles, to_safetensors_hint

LLAVA_HF_PREFIXES = ("model.vision_tower.", "vision_tower.")
ORIGINAL_PREFIX = "model.vision_tower.vision_tower."
TOWER_PREFIX = "vision_model."
FAMILY_OF_VISION_TYPE = {"clip_vision_model": "clip", "siglip_vision_model": "siglip"}
#: bookkeeping keys of a config, never copied from the tower
BOOKKEEPING = {"architectures", "dtype", "torch_dtype", "transformers_version", "_name_or_path"}
#: vision-config keys that stay the checkpoint's: its structure, or fields no forward pass reads
VISION_KEEP = BOOKKEEPING | {"model_type", "vision_use_head", "projection_dim", "initializer_range", "initializer_factor", "vocab_size"}
#: image-processor fields that follow the tower when the family stays the same
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")
LAYER_INDEX = re.compile(r"encoder\.layers\.(\d+)\.")


# ---------------------------------------------------------------- reading
def _read_json(path: Path) -> dict:
    data = read_json(path)
    if not isinstance(data, dict):
        raise DcrError(f"{path} must hold a JSON object; re-download or re-create it")
    return data


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _with_defaults(model_type: str, values: dict) -> dict:
    """A config dict completed with its class defaults (hub configs leave defaults out)."""
    from transformers import AutoConfig

    return {**AutoConfig.for_model(model_type).to_dict(), **values}


def _llava_defaults(values: dict) -> dict:
    """A llava-hf config's own fields completed with LlavaConfig's defaults, read from its dataclass
    fields: building one would build a Llama config too, whose import takes seconds."""
    from transformers import LlavaConfig

    return {**{f.name: f.default for f in fields(LlavaConfig) if f.default is not MISSING}, **values}


@dataclass(frozen=True)
class Tower:
    """A HF CLIP/SigLIP tower directory: shape facts, vision config, vision-encoder tensors, image processor."""

    name: str
    path: Path
    spec: TowerSpec
    vision_config: dict
    tensors: dict[str, StoredTensor]  # "vision_model.*" -> where it is stored
    image_processor: dict | None


def read_tower(name_or_path: str | Path) -> Tower:
    spec = inspect_tower(name_or_path, allow_pickle=True)  # pickles are never loaded here: refused below
    if spec.family == "open_clip":
        raise DcrError(
            f"{name_or_path} is an open_clip tower; a LLaVA checkpoint takes a HF CLIP/MetaCLIP/SigLIP tower directory "
            "(transformers' save_pretrained layout)"
        )
    path = resolve_tower_path(name_or_path)
    if not weight_files(path):
        pickles = sorted(p for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise DcrError(f"tower {path} has only PyTorch pickle weights; convert them to safetensors: {to_safetensors_hint(pickles[0])}")
    config = _read_json(path / "config.json")
    vision = config["vision_config"] if config["model_type"] in ("clip", "siglip") else config
    vision_type = f"{spec.family}_vision_model"
    vision = {k: v for k, v in _with_defaults(vision_type, vision).items() if k not in BOOKKEEPING} | {"model_type": vision_type}
    tensors = {}
    vision_only = config["model_type"] == vision_type
    for name in weight_files(path):
        stored, _ = read_header(path / name)
        for key, value in stored.items():
            if key.startswith(TOWER_PREFIX):
                tensors[key] = value
            elif vision_only and not key.startswith("visual_projection."):
                # transformers 5 saves a freshly built vision model without its vision_model level
                tensors[TOWER_PREFIX + key] = value
    if not tensors:
        raise DcrError(f"tower {path} has no vision_model.* tensors in safetensors files; save it with save_pretrained(safe_serialization=True)")
    processor_file = path / "preprocessor_config.json"
    processor = _read_json(processor_file) if processor_file.is_file() else None
    return Tower(str(name_or_path), path, spec, vision, tensors, processor)


def load_vision_state(tower: Tower, vision: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The tower's tensors under ``vision``'s own state-dict names (with or without the
    ``vision_model`` level), in their stored dtype: what ``vision.load_state_dict`` takes."""
    state, missing = {}, []
    for name in vision.state_dict():
        stored = tower.tensors.get(TOWER_PREFIX + name.removeprefix(TOWER_PREFIX))
        if stored is None:
            missing.append(name)
        else:
            state[name] = stored.load()
    if missing:
        raise DcrError(f"{tower.path} lacks vision weights ({sorted(missing)[0]}, ...); it is not a complete tower directory")
    return state


@dataclass(frozen=True)
class Checkpoint:
    """A LLaVA checkpoint directory as found on disk: its format, config and weight files."""

    path: Path
    format: str  # "llava-hf" or "original" (a key of FORMATS)
    config: dict
    shards: dict[str, dict[str, StoredTensor]]  # safetensors file name -> its tensors
    shard_metadata: dict[str, dict[str, str]]
    index: dict | None  # model.safetensors.index.json, when the weights are sharded
    bin_files: tuple[str, ...]  # PyTorch pickles (original checkpoints only), copied as they are
    allow_pickle: bool = False  # whether the .bin files may be loaded (restricted unpickler)

    @property
    def kind(self) -> CheckpointFormat:
        return FORMATS[self.format]

    @property
    def tensors(self) -> dict[str, StoredTensor]:
        return {k: v for shard in self.shards.values() for k, v in shard.items()}

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())

    def tower_keys(self) -> dict[str, str]:
        """Checkpoint key -> tower key (``vision_model.*``) for every stored vision-tower tensor."""
        found = {}
        for key in self.tensors:
            for prefix in self.kind.prefixes:
                if key.startswith(prefix):
                    rest = key[len(prefix):]
                    found[key] = rest if rest.startswith(TOWER_PREFIX) else TOWER_PREFIX + rest
                    break
        return found


def read_checkpoint(path: str | Path, allow_pickle: bool = False) -> Checkpoint:
    """The checkpoint's format, config and safetensors headers, every JSON and safetensors file checked;
    ``allow_pickle`` lets its .bin files be loaded where their tensor names are needed."""
    path = Path(path)
    if not path.is_dir():
        raise DcrError(f"LLaVA checkpoint {path}: no such directory")
    if not (path / "config.json").is_file():
        raise DcrError(f"{path} has no config.json; give a LLaVA checkpoint directory")
    check_model_dir(path, allow_pickle=True)  # .bin files are copied as they are; loading them is checked where it happens
    config = _read_json(path / "config.json")
    kind = next((kind for kind in FORMATS.values() if kind.holds(config)), None)
    if kind is None:
        raise DcrError(f"{path} is neither a llava-hf checkpoint (LlavaForConditionalGeneration) nor an original LLaVA one (mm_vision_tower)")
    bins = tuple(sorted(p.name for p in path.glob("*.bin")))
    names = weight_files(path)
    if kind.needs_safetensors and not names and not (allow_pickle and bins):  # with allow_pickle swap_tower converts them
        raise DcrError(
            f"{path} has no safetensors weights{' (only .bin pickles: pass --allow-pickle to read them with the restricted unpickler)' if bins else ''}; "
            "or re-save it with LlavaForConditionalGeneration.from_pretrained(SRC).save_pretrained(DIR) and swap into DIR"
        )
    if not names and not bins:
        raise DcrError(f"{path} has no weight files (*.safetensors or *.bin)")
    shards, metadata = {}, {}
    for name in names:
        shards[name], metadata[name] = read_header(path / name)
    index = _read_json(path / INDEX_NAME) if (path / INDEX_NAME).is_file() else None
    return Checkpoint(path, kind.name, config, shards, metadata, index, () if kind.needs_safetensors else bins, allow_pickle)


# ---------------------------------------------------------------- checks
def feature_layer_problems(label: str, layers, num_layers: int) -> list[str]:
    layers = layers if isinstance(layers, list) else [layers]
    return [
        f"feature layer {layer} ({label}) does not exist in the tower's {num_layers} layers"
        for layer in layers
        if not -num_layers <= layer <= num_layers
    ]


def shape_problems(checkpoint_facts: dict[str, int | None], spec: TowerSpec) -> list[str]:
    """``{"hidden size" | "layers" | "patch size" | "image size": the checkpoint's value or None}``
    against the tower's: one line per mismatch."""
    tower_facts = {"hidden size": spec.hidden_size, "layers": spec.num_layers, "patch size": spec.patch_size, "image size": spec.image_size}
    return [
        f"{label}: checkpoint {value}, tower {tower_facts[label]}"
        for label, value in checkpoint_facts.items()
        if value is not None and value != tower_facts[label]
    ]


def vision_config_problems(vision: dict, feature_layer, spec: TowerSpec) -> list[str]:
    """A llava-hf ``vision_config`` (with its defaults) and ``vision_feature_layer`` against a tower."""
    facts = {"hidden size": vision["hidden_size"], "layers": vision["num_hidden_layers"],
             "patch size": vision["patch_size"], "image size": vision["image_size"]}
    return shape_problems(facts, spec) + feature_layer_problems("vision_feature_layer", feature_layer, spec.num_layers)


def _tensor_problems(checkpoint: Checkpoint, tower: Tower) -> list[str]:
    """Every stored tower tensor needs a same-shaped tensor in the new tower (position_ids buffers excepted)."""
    stored = checkpoint.tensors
    missing, differ = [], []
    for key, tower_key in checkpoint.tower_keys().items():
        if tower_key in tower.tensors:
            if tower.tensors[tower_key].shape != stored[key].shape:
                differ.append(f"{tower_key}: checkpoint {list(stored[key].shape)}, tower {list(tower.tensors[tower_key].shape)}")
        elif not key.endswith("position_ids"):
            missing.append(tower_key)
    problems = []
    if missing:
        problems.append(f"the tower lacks {len(missing)} tensor(s) the checkpoint has, e.g. {missing[0]}")
    if differ:
        problems.append(f"{len(differ)} tensor shape(s) differ, e.g. {differ[0]}")
    return problems


def _stored_layer_count(keys) -> int | None:
    layers = {int(m.group(1)) for key in keys if (m := LAYER_INDEX.search(key))}
    return max(layers) + 1 if layers else None


# ---------------------------------------------------------------- the two formats
@dataclass
class Fit:
    """What checking a tower against a checkpoint found."""

    problems: list[str]
    notes: list[str] = field(default_factory=list)
    family_change: bool = False


@dataclass
class Changes:
    """A format's new config and side files, and the summary lines for them."""

    config: dict
    json_files: dict[str, dict]  # file name -> new content
    lines: list[str]
    notes: list[str] = field(default_factory=list)


class CheckpointFormat:
    """Where a format keeps its tower and what changes with it; the core does the rest."""

    name: str
    prefixes: tuple[str, ...]  # checkpoint-key prefixes of the stored tower tensors
    needs_safetensors: bool  # False: .bin pickles are copied as they are

    def holds(self, config: dict) -> bool:
        raise NotImplementedError

    def check(self, checkpoint: Checkpoint, tower: Tower, allow_family_change: bool) -> Fit:
        raise NotImplementedError

    def changes(self, checkpoint: Checkpoint, tower: Tower, dst: Path, family_change: bool) -> Changes:
        raise NotImplementedError

    def before_write(self) -> None:
        """Work to overlap with the copy."""

    def write_extra(self, plan: SwapPlan, out: Path) -> set[str]:
        """Write what the core does not (beside the shards, config and json files); returns the names written."""
        return set()

    def verify_extra(self, plan: SwapPlan, out: Path) -> str:
        raise NotImplementedError


class LlavaHf(CheckpointFormat):
    """``LlavaForConditionalGeneration`` checkpoints: the tower lives in the shards and ``vision_config``."""

    name, prefixes, needs_safetensors = "llava-hf", LLAVA_HF_PREFIXES, True

    def holds(self, config: dict) -> bool:
        return config.get("model_type") == "llava" and "vision_config" in config

    def check(self, checkpoint: Checkpoint, tower: Tower, allow_family_change: bool) -> Fit:
        config = _llava_defaults({k: v for k, v in checkpoint.config.items() if k not in ("vision_config", "text_config")})
        vision = checkpoint.config["vision_config"]
        family = FAMILY_OF_VISION_TYPE.get(vision.get("model_type"))
        if family is None:
            return Fit([f"the checkpoint's vision tower is {vision.get('model_type')!r}, not CLIP or SigLIP"])
        if not checkpoint.tower_keys():
            return Fit(["the checkpoint stores no vision_tower.* tensors"])
        spec = tower.spec
        fit = Fit(vision_config_problems(_with_defaults(vision["model_type"], vision), config["vision_feature_layer"], spec))
        fit.family_change = family != spec.family
        if fit.family_change:
            tokens = f"checkpoint {family} ({config['image_seq_length']} image tokens), tower {spec.family} ({spec.num_patches} image tokens)"
            if allow_family_change:
                fit.notes.append(f"warning: {tokens}: the projector was trained on {family} features and must be retrained")
            else:
                fit.problems.append(f"family: {tokens}; pass --allow-family-change to swap anyway, then retrain the projector")
        elif not fit.problems:
            fit.problems += _tensor_problems(checkpoint, tower)
        return fit

    def changes(self, checkpoint: Checkpoint, tower: Tower, dst: Path, family_change: bool) -> Changes:
        config, lines = _llava_hf_config(checkpoint, tower, family_change)
        json_files, processor_lines = processor_updates(checkpoint, tower, family_change)
        return Changes(config, json_files, lines + processor_lines)

    def before_write(self) -> None:
        _import_llava_in_background()  # ready by the load check, which follows the copy

    def verify_extra(self, plan: SwapPlan, out: Path) -> str:
        return load_check(out)


class OriginalLlava(CheckpointFormat):
    """Original LLaVA checkpoints: ``mm_vision_tower`` names the tower, which may also be stored in the shards."""

    name, prefixes, needs_safetensors = "original", (ORIGINAL_PREFIX,), False

    def holds(self, config: dict) -> bool:
        return "mm_vision_tower" in config

    def check(self, checkpoint: Checkpoint, tower: Tower, allow_family_change: bool) -> Fit:
        config, spec = checkpoint.config, tower.spec
        fit = Fit(shape_problems({"hidden size": config.get("mm_hidden_size")}, spec))
        fit.problems += feature_layer_problems("mm_vision_select_layer", config.get("mm_vision_select_layer", -2), spec.num_layers)
        name = str(config["mm_vision_tower"])
        old = _original_tower_spec(name, checkpoint.path)
        # original LLaVA builds every tower as its CLIPVisionTower (llava/model/multimodal_encoder/builder.py)
        family = "clip"
        if old is not None:
            fit.problems += shape_problems({"layers": old.num_layers, "patch size": old.patch_size, "image size": old.image_size}, spec)
            family = old.family
        else:
            fit.notes.append(f"note: the original tower {name} is not on this machine, so only its stored tensors and mm_hidden_size were checked")
        if family != spec.family:
            fit.problems.append(
                f"family: checkpoint {family}, tower {spec.family}; an original LLaVA checkpoint keeps its tower family: "
                "convert it with `dcr-mllm convert-llava`, then swap with --allow-family-change"
            )
        stored = checkpoint.tower_keys()
        if any(key.startswith(ORIGINAL_PREFIX) for key in _bin_keys(checkpoint)):
            fit.problems.append("its vision tower is stored in .bin pickles; pass --allow-pickle to read them (restricted unpickler) "
                                "and write the result as safetensors")
        if stored and not fit.problems:
            fit.problems += shape_problems({"layers": _stored_layer_count(stored.values())}, spec) or _tensor_problems(checkpoint, tower)
        return fit

    def changes(self, checkpoint: Checkpoint, tower: Tower, dst: Path, family_change: bool) -> Changes:
        config = dict(checkpoint.config)
        config["mm_vision_tower"] = str(dst.expanduser().resolve() / "vision_tower")
        line = f"mm_vision_tower: {checkpoint.config['mm_vision_tower']} -> {config['mm_vision_tower']} (a copy of the tower)"
        return Changes(config, {}, [line], _original_notes(dst))

    def write_extra(self, plan: SwapPlan, out: Path) -> set[str]:
        shutil.copytree(plan.tower.path, out / "vision_tower", ignore=shutil.ignore_patterns(".*"))
        return {"vision_tower"}

    def verify_extra(self, plan: SwapPlan, out: Path) -> str:
        count = 0
        for name in weight_files(plan.tower.path):
            original, _ = read_header(plan.tower.path / name)
            copied, _ = read_header(out / "vision_tower" / name)
            for key, stored in original.items():
                if key not in copied or not same_bytes(stored, copied[key]):
                    raise DcrError(f"verification failed: {out / 'vision_tower' / name} differs from the tower's {key}")
                count += 1
        return f"vision_tower/ holds the tower's {count} tensors unchanged"


FORMATS: dict[str, CheckpointFormat] = {kind.name: kind for kind in (OriginalLlava(), LlavaHf())}  # tried in this order


def _bin_keys(checkpoint: Checkpoint) -> list[str]:
    """Tensor names in an original checkpoint's .bin files, from their index or a memory-mapped load."""
    index = checkpoint.path / "pytorch_model.bin.index.json"
    if index.is_file():
        return list(_read_json(index)["weight_map"])
    if not checkpoint.allow_pickle:
        refuse_pickles([checkpoint.path / name for name in checkpoint.bin_files])
    keys = []
    for name in checkpoint.bin_files:
        keys += list(torch.load(checkpoint.path / name, map_location="cpu", mmap=True, weights_only=True))
    return keys


def _original_tower_spec(name: str, checkpoint_dir: Path) -> TowerSpec | None:
    """Shape facts of the tower an original checkpoint names, if its config is on this machine (no
    download); a config that is there but unreadable is an error, never a guess."""
    from huggingface_hub import try_to_load_from_cache

    candidates = [Path(name).expanduser(), checkpoint_dir / name]
    with contextlib.suppress(ValueError):  # a path, not a hub id
        cached = try_to_load_from_cache(name, "config.json")
        if isinstance(cached, str):
            candidates.append(Path(cached).parent)
    for candidate in candidates:
        if (candidate / "config.json").is_file():
            try:
                return inspect_tower(candidate, allow_pickle=True)  # its weights are never read here
            except DcrError as err:
                raise DcrError(f"the checkpoint's tower {name} ({candidate}) cannot be checked: {err}") from err
    return None


def _original_notes(dst: Path) -> list[str]:
    """Original LLaVA's loader picks the LLaVA class by name: 'llava' must be in the model's directory name."""
    notes = [f"note: mm_vision_tower is the absolute path {dst.expanduser().resolve() / 'vision_tower'}; update it if you move DST"]
    if "llava" in dst.name.lower():
        notes.append("note: the directory name contains 'llava', as original LLaVA loaders (load_pretrained_model) require")
    else:
        notes.append(
            f"note: original LLaVA loaders (load_pretrained_model) build a LLaVA model only when the directory name contains "
            f"'llava'; rename {dst.name} (e.g. to {dst.name}-llava) before loading it there"
        )
    return notes


# ---------------------------------------------------------------- llava-hf's config and processor
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
        data = _read_json(path)
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
    full_old = _with_defaults(old["model_type"], old)
    for key, value in tower.vision_config.items():
        if key not in VISION_KEEP and full_old.get(key) != value:
            changes.append(f"vision_config.{key}: {full_old.get(key)} -> {value}")
            config["vision_config"][key] = value
    return config, changes


# ---------------------------------------------------------------- plan, write, verify, report
@dataclass
class SwapPlan:
    """Everything a swap will write, decided (and checked) before anything is written."""

    checkpoint: Checkpoint
    tower: Tower
    layout: dict[str, list[tuple[str, Source]]]  # output safetensors file -> tensors in order
    tower_tensors: dict[str, Source]  # output key -> the tower tensor it must equal
    dropped: list[str]  # the old tower's keys, when the family changes and the key set with it
    config: dict
    json_files: dict[str, dict]  # processor files rewritten
    changes: list[str]
    notes: list[str]


def plan_swap(src: str | Path, tower: str | Path, dst: str | Path, allow_family_change: bool = False,
              allow_pickle: bool = False) -> SwapPlan:
    """Check the tower against the checkpoint and decide every tensor and file of DST; writes nothing."""
    checkpoint = read_checkpoint(src, allow_pickle)
    new_tower = read_tower(tower)
    fit = checkpoint.kind.check(checkpoint, new_tower, allow_family_change)
    if fit.problems:
        raise DcrError(f"tower {tower} does not fit {src}: " + "; ".join(fit.problems))
    layout, tower_tensors = _layout(checkpoint, new_tower, fit.family_change)
    changes = checkpoint.kind.changes(checkpoint, new_tower, Path(dst), fit.family_change)
    dropped = list(checkpoint.tower_keys()) if fit.family_change else []
    return SwapPlan(checkpoint, new_tower, layout, tower_tensors, dropped, changes.config, changes.json_files, changes.lines,
                    fit.notes + changes.notes)


def _layout(checkpoint: Checkpoint, tower: Tower, family_change: bool) -> tuple[dict[str, list[tuple[str, Source]]], dict[str, Source]]:
    """Each output shard's tensors in the source's order, and which of them must equal the tower's.

    Within a family, each stored tower tensor is replaced in place (cast to its dtype). Across
    families the key sets differ: the old tower's tensors are dropped and the new tower's, named
    in the checkpoint's key style, take the place of the first of them.
    """
    tower_keys = checkpoint.tower_keys()
    incoming = {}
    if family_change:
        first = next(iter(tower_keys))
        prefix = next(p for p in LLAVA_HF_PREFIXES if first.startswith(p))
        keeps_level = first[len(prefix):].startswith(TOWER_PREFIX)
        dtype = DTYPES[checkpoint.tensors[first].dtype]
        incoming = {prefix + (key if keeps_level else key[len(TOWER_PREFIX):]): _as_dtype(source, dtype) for key, source in tower.tensors.items()}
    layout, tower_tensors = {}, {}
    for shard, tensors in checkpoint.shards.items():
        items = []
        for key, stored in sorted(tensors.items(), key=lambda kv: kv[1].start):
            tower_key = tower_keys.get(key)
            if tower_key is None or (not family_change and tower_key not in tower.tensors):  # a position_ids buffer stays
                items.append((key, stored))
            elif family_change:
                items += incoming.items()
                tower_tensors.update(incoming)
                incoming = {}
            else:
                source = _as_dtype(tower.tensors[tower_key], DTYPES[stored.dtype])
                items.append((key, source))
                tower_tensors[key] = source
        layout[shard] = items
    return layout, tower_tensors


def _as_dtype(stored: StoredTensor, dtype: torch.dtype) -> Source:
    return stored if DTYPES[stored.dtype] == dtype else Cast(stored, dtype)


@dataclass
class SwapReport:
    """What a swap did (or, for a dry run, would do); ``lines()`` is the one-screen summary."""

    plan: SwapPlan
    src: Path
    dst: Path
    dry_run: bool
    verified: list[str] = field(default_factory=list)
    converted: list[str] = field(default_factory=list)  # SRC's .bin shards, read as safetensors ones

    def lines(self) -> list[str]:
        plan, checkpoint, spec = self.plan, self.plan.checkpoint, self.plan.tower.spec
        replaced = [(k, s) for items in plan.layout.values() for k, s in items if k in plan.tower_tensors]
        copied = [s for items in plan.layout.values() for k, s in items if k not in plan.tower_tensors]
        replaced_bytes = sum(nbytes(s) for _, s in replaced)
        dtypes = sorted({str(s.dtype).removeprefix("torch.") for _, s in replaced if isinstance(s, Cast)})
        cast = f", cast to {'/'.join(dtypes)}" if dtypes else ""
        head = f"swap-tower {self.src} -> {self.dst}" + ("   (dry run: nothing written)" if self.dry_run else "")
        action = "replace" if not self.dry_run else "would replace"
        if plan.dropped:
            action += f" the {len(plan.dropped)} old tower tensors with"
        lines = [
            head,
            f"  checkpoint  {checkpoint.format}, {len(checkpoint.shards)} safetensors file(s), {human_size(checkpoint.nbytes)}",
            (f"  tower       {plan.tower.path} ({spec.family}, {spec.num_layers} layers, width {spec.hidden_size}, "
             f"{spec.image_size} px / patch {spec.patch_size})"),
            (f"  tensors     {action} {len(replaced)} vision-tower tensors ({human_size(replaced_bytes)}{cast}); "
             f"copy {len(copied)} others byte for byte ({human_size(sum(s.nbytes for s in copied))})"),
        ]
        if self.converted:
            lines.append(f"  files       {len(self.converted)} .bin shard(s) of SRC read with the restricted unpickler and written as "
                         "safetensors shards with an index")
        if checkpoint.format == "original":
            bins = f"; {len(checkpoint.bin_files)} .bin file(s) copied as they are" if checkpoint.bin_files else ""
            lines.append(f"  files       tower directory copied to {self.dst / 'vision_tower'}{bins}")
        lines += [f"  {'config' if i == 0 else '':10}  {change}" for i, change in enumerate(plan.changes or ["unchanged"])]
        lines += [f"  {'verified' if i == 0 else '':10}  {check}" for i, check in enumerate(self.verified)]
        lines += [f"  {note}" for note in plan.notes]
        return lines


def check_destination(src: Path, dst: Path, force: bool) -> None:
    """Refuse a DST that exists (without force) or that overlaps SRC, which is never modified."""
    if not src.is_dir():
        raise DcrError(f"LLaVA checkpoint {src}: no such directory")
    real_src, real_dst = src.resolve(), dst.expanduser().resolve()
    if real_dst == real_src or real_dst.is_relative_to(real_src) or real_src.is_relative_to(real_dst):
        raise DcrError(f"output {dst} overlaps the input {src}; the input is never modified: choose another output directory")
    if dst.exists() and not force:
        raise DcrError(f"output {dst} already exists; pass --force to replace it")


def _copy_side_files(src: Path, out: Path, skip: set[str]) -> None:
    for item in src.iterdir():
        if item.name in skip:
            continue
        if item.is_dir():
            shutil.copytree(item, out / item.name, symlinks=True)
        else:
            shutil.copy2(item, out / item.name)


def write_plan(plan: SwapPlan, out: Path) -> dict[str, list[bytes]]:
    """Write every file of DST into ``out``; returns each shard's tensor digests (see ``write_shard``)."""
    checkpoint = plan.checkpoint
    totals = {"total_size": 0, "total_parameters": 0}
    weight_map = {}
    shards = list(plan.layout)
    digests = dict(zip(shards, parallel(lambda shard: write_shard(out / shard, plan.layout[shard], checkpoint.shard_metadata[shard]), shards)))
    for shard, items in plan.layout.items():
        for key, source in items:
            totals["total_size"] += nbytes(source)
            totals["total_parameters"] += numel(source.shape)
            weight_map[key] = shard
    if checkpoint.index is not None:
        metadata = dict(checkpoint.index.get("metadata") or {})
        metadata.update({k: v for k, v in totals.items() if k in metadata or k == "total_size"})
        write_json(out / INDEX_NAME, {"metadata": metadata, "weight_map": dict(sorted(weight_map.items()))})
    written = {*plan.layout, INDEX_NAME, "config.json", *plan.json_files, *checkpoint.kind.write_extra(plan, out)}
    if plan.config == checkpoint.config:
        shutil.copy2(checkpoint.path / "config.json", out / "config.json")
    else:
        write_json(out / "config.json", plan.config)
    for name, data in plan.json_files.items():
        write_json(out / name, data)
    _copy_side_files(checkpoint.path, out, written)
    return digests


def verify(plan: SwapPlan, out: Path, digests: dict[str, list[bytes]]) -> list[str]:
    """Read DST back: copies byte-identical to SRC, tower tensors equal to the tower's (by the
    digests ``write_plan`` recorded), and the format's own check (llava-hf: transformers'
    ``LlavaForConditionalGeneration`` accepts every key and shape; original: the tower copy)."""
    counts = parallel(lambda shard: _verify_shard(plan, out, shard, digests[shard]), list(plan.layout))
    identical, equal = sum(c[0] for c in counts), sum(c[1] for c in counts)
    checks = [f"{identical} tensors byte-identical to SRC, {equal} equal to the tower's (xxh3-128 of every tensor)"]
    for name in plan.checkpoint.bin_files:
        if not same_file(plan.checkpoint.path / name, out / name):
            raise DcrError(f"verification failed: {out / name} differs from {plan.checkpoint.path / name}")
    if plan.checkpoint.bin_files:
        checks.append(f"{len(plan.checkpoint.bin_files)} .bin file(s) byte-identical to SRC")
    checks.append(plan.checkpoint.kind.verify_extra(plan, out))
    return checks


def _verify_shard(plan: SwapPlan, out: Path, shard: str, digests: list[bytes]) -> tuple[int, int]:
    """(tensors byte-identical to SRC, tensors equal to the tower's) in one written shard."""
    items = plan.layout[shard]
    written, _ = read_header(out / shard)
    if [(key, stored.dtype, stored.shape) for key, stored in written.items()] != [(key, *describe(source)[:2]) for key, source in items]:
        raise DcrError(f"verification failed: {out / shard} does not hold the planned tensors")
    for (key, _), digest in zip(items, digests):
        if written[key].digest() != digest:
            origin = "the tower's tensor" if key in plan.tower_tensors else plan.checkpoint.path
            raise DcrError(f"verification failed: {key} in {shard} differs from {origin}")
    equal = sum(key in plan.tower_tensors for key, _ in items)
    return len(items) - equal, equal


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
        with _quiet_transformers():
            _, info = LlavaForConditionalGeneration.from_pretrained(directory, device_map="meta", output_loading_info=True)
    except Exception as err:  # transformers raises plain exceptions with multi-line reports
        raise DcrError(f"verification failed: LlavaForConditionalGeneration cannot load the result ({str(err).splitlines()[0]})") from err
    bad = {kind: keys for kind, keys in info.items() if keys}
    if bad:
        kind, keys = next(iter(bad.items()))
        raise DcrError(f"verification failed: LlavaForConditionalGeneration reports {len(keys)} {kind.replace('_', ' ')}, e.g. {min(map(str, keys))}")
    return "LlavaForConditionalGeneration.from_pretrained accepts every key and shape (meta device)"


def swap_tower(src: str | Path, tower: str | Path, dst: str | Path, *, force: bool = False, dry_run: bool = False,
               allow_family_change: bool = False, allow_pickle: bool = False) -> SwapReport:
    """Write SRC with TOWER's vision encoder to DST; see the module docstring. Returns the report."""
    src, dst = Path(src), Path(dst)
    check_destination(src, dst, force)
    with contextlib.ExitStack() as stack:
        readable, converted = src, []
        if allow_pickle and pickled_weight_files(src):  # .bin shards: read as safetensors ones, written as safetensors
            read_checkpoint(src, allow_pickle)  # its format and files checked before the shards are converted
            readable = stack.enter_context(scratch_dir(dst))
            converted = convert_pickled_checkpoint(src, readable)
        plan = plan_swap(readable, tower, dst, allow_family_change, allow_pickle)
        report = SwapReport(plan, src, dst, dry_run, converted=converted)
        if dry_run:
            return report
        with atomic_dir(dst) as tmp:
            plan.checkpoint.kind.before_write()
            digests = write_plan(plan, tmp)
            report.verified = verify(plan, tmp, digests)
    return report


__all__ = [
    "Checkpoint", "CheckpointFormat", "LlavaHf", "OriginalLlava", "SwapPlan", "SwapReport", "Tower", "check_destination",
    "feature_layer_problems", "load_check", "load_vision_state", "plan_swap", "processor_updates", "read_checkpoint", "read_tower",
    "shape_problems", "swap_tower", "vision_config_problems",
]
