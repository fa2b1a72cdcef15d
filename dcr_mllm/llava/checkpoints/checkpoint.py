"""Reading LLaVA checkpoints and HF towers from disk, without loading a model: config, safetensors
headers, the tower's vision tensors. What a format makes of them lives in ``llava.checkpoints.formats``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from dcr_mllm.errors import DcrError
from dcr_mllm.llava.shards import StoredTensor, read_header, weight_files
from dcr_mllm.strict import read_json
from dcr_mllm.towers import TowerSpec, inspect_tower, resolve_tower_path
from dcr_mllm.weights import PICKLE_SUFFIXES, to_safetensors_hint

TOWER_PREFIX = "vision_model."
#: bookkeeping keys of a config, never copied from the tower
BOOKKEEPING = {"architectures", "dtype", "torch_dtype", "transformers_version", "_name_or_path"}


def read_json_object(path: Path) -> dict:
    data = read_json(path)
    if not isinstance(data, dict):
        raise DcrError(f"{path} must hold a JSON object; re-download or re-create it")
    return data


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def with_defaults(model_type: str, values: dict) -> dict:
    """A config dict completed with its class defaults (hub configs leave defaults out)."""
    from transformers import AutoConfig

    return {**AutoConfig.for_model(model_type).to_dict(), **values}


@dataclass(frozen=True)
class Tower:
    """A HF tower directory (a family LLaVA takes): shape facts, vision config, vision-encoder tensors, image processor."""

    name: str
    path: Path
    spec: TowerSpec
    vision_config: dict
    tensors: dict[str, StoredTensor]  # "vision_model.*" -> where it is stored
    image_processor: dict | None


def read_tower(name_or_path: str | Path) -> Tower:
    spec = inspect_tower(name_or_path, allow_pickle=True)  # pickles are never loaded here: refused below
    spec.family.require_llava(name_or_path)
    path = resolve_tower_path(name_or_path)
    if not weight_files(path):
        pickles = sorted(p for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise DcrError(
                f"tower {path} has only PyTorch pickle weights; convert them to safetensors: {to_safetensors_hint(pickles[0])}"
            )
    config = read_json_object(path / "config.json")
    vision_only = config["model_type"] != spec.family.model_type
    vision = config if vision_only else config["vision_config"]
    vision_type = spec.family.vision_model_type
    vision = {k: v for k, v in with_defaults(vision_type, vision).items() if k not in BOOKKEEPING} | {
        "model_type": vision_type
    }
    tensors = {}
    for name in weight_files(path):
        stored, _ = read_header(path / name)
        for key, value in stored.items():
            if key.startswith(TOWER_PREFIX):
                tensors[key] = value
            elif vision_only and not key.startswith("visual_projection."):
                # transformers 5 saves a freshly built vision model without its vision_model level
                tensors[TOWER_PREFIX + key] = value
    if not tensors:
        raise DcrError(
            f"tower {path} has no vision_model.* tensors in safetensors files; save it with save_pretrained(safe_serialization=True)"
        )
    processor_file = path / "preprocessor_config.json"
    processor = read_json_object(processor_file) if processor_file.is_file() else None
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
        raise DcrError(
            f"{tower.path} lacks vision weights ({sorted(missing)[0]}, ...); it is not a complete tower directory"
        )
    return state


@dataclass(frozen=True)
class Checkpoint:
    """A LLaVA checkpoint directory as found on disk: its format, config and weight files."""

    path: Path
    format: str  # "llava-hf" or "original" (a key of llava.checkpoints.formats.FORMATS)
    prefixes: tuple[str, ...]  # checkpoint-key prefixes of the stored tower tensors (the format's)
    config: dict
    shards: dict[str, dict[str, StoredTensor]]  # safetensors file name -> its tensors
    shard_metadata: dict[str, dict[str, str]]
    index: dict | None  # model.safetensors.index.json, when the weights are sharded
    bin_files: tuple[str, ...]  # PyTorch pickles (original checkpoints only), copied as they are
    allow_pickle: bool = False  # whether the .bin files may be loaded (restricted unpickler)

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
            for prefix in self.prefixes:
                if key.startswith(prefix):
                    rest = key[len(prefix) :]
                    found[key] = rest if rest.startswith(TOWER_PREFIX) else TOWER_PREFIX + rest
                    break
        return found
