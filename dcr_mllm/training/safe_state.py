"""Checkpoint files without pickle: nested state dicts as safetensors plus a JSON skeleton.

Optimizer, scheduler and DeepSpeed state are trees of dicts and lists whose leaves are tensors
or plain values. ``save_tree`` stores every tensor in a safetensors file under its path in the
tree and the rest of the tree (with tensor placeholders) as JSON in the file's metadata;
``load_tree`` rebuilds it. Nothing is ever unpickled, so a checkpoint cannot run code.

``SafetensorsCheckpointEngine`` plugs this format into DeepSpeed, so DeepSpeed keeps its
partition-aware checkpoint logic (ZeRO-2 and ZeRO-3 shards) and writes no pickle.
"""

from __future__ import annotations

import enum
import json
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

SKELETON_KEY = "dcr_mllm.tree"
#: plain-state objects DeepSpeed puts in its checkpoints (e.g. its loss scaler); only classes
#: from these packages are rebuilt on load, from their attributes, never by running pickle code
TRUSTED_MODULES = ("deepspeed.",)


def _encode(node: Any, tensors: dict[str, torch.Tensor], path: str) -> Any:
    if isinstance(node, torch.Tensor):
        tensors[path] = node.detach().cpu().contiguous().clone()
        return {"__tensor__": path}
    if isinstance(node, torch.Size):
        return {"__size__": list(node)}
    if isinstance(node, torch.dtype):
        return {"__dtype__": str(node).removeprefix("torch.")}
    if isinstance(node, enum.Enum):
        return _encode(node.value, tensors, path)
    if isinstance(node, dict):
        kind = "__odict__" if isinstance(node, OrderedDict) else "__dict__"
        return {
            kind: [
                [_encode(k, tensors, f"{path}/k{i}"), _encode(v, tensors, f"{path}/{i}")]
                for i, (k, v) in enumerate(node.items())
            ]
        }
    if isinstance(node, (list, tuple)):
        items = [_encode(v, tensors, f"{path}/{i}") for i, v in enumerate(node)]
        return {"__tuple__": items} if isinstance(node, tuple) else items
    if isinstance(node, (set, frozenset)):
        return {"__set__": [_encode(v, tensors, f"{path}/{i}") for i, v in enumerate(sorted(node, key=repr))]}
    if type(node).__module__.startswith(TRUSTED_MODULES) and hasattr(node, "__dict__"):
        cls = type(node)
        return {"__object__": [f"{cls.__module__}:{cls.__qualname__}", _encode(vars(node), tensors, path)]}
    if node is None or isinstance(node, (bool, int, float, str)):
        if isinstance(node, float) and not (node == node and abs(node) != float("inf")):
            return {"__float__": repr(node)}
        return node
    raise TypeError(f"cannot store {type(node).__name__} at {path or '<root>'} in a safetensors checkpoint")


def _decode(node: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(node, list):
        return [_decode(v, tensors) for v in node]
    if not isinstance(node, dict):
        return node
    ((kind, value),) = node.items()
    if kind == "__tensor__":
        return tensors[value]
    if kind == "__size__":
        return torch.Size(value)
    if kind == "__dtype__":
        return getattr(torch, value)
    if kind == "__float__":
        return float(value)
    if kind == "__tuple__":
        return tuple(_decode(v, tensors) for v in value)
    if kind == "__set__":
        return {_decode(v, tensors) for v in value}
    if kind == "__object__":
        return _rebuild_object(value[0], _decode(value[1], tensors))
    pairs = [(_decode(k, tensors), _decode(v, tensors)) for k, v in value]
    return OrderedDict(pairs) if kind == "__odict__" else dict(pairs)


def _rebuild_object(qualified: str, attributes: dict) -> Any:
    import importlib

    module_name, _, qualname = qualified.partition(":")
    if not module_name.startswith(TRUSTED_MODULES):
        raise ValueError(f"checkpoint names class {qualified}, which is not from a trusted package")
    cls = importlib.import_module(module_name)
    for part in qualname.split("."):
        cls = getattr(cls, part)
    obj = cls.__new__(cls)
    obj.__dict__.update(attributes)
    return obj


def save_tree(tree: Any, path: str | Path) -> None:
    """Write ``tree`` to ``path`` (safetensors), via a temporary file and an atomic rename."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _encode(tree, tensors, "")
    tmp = f"{path}.tmp{os.getpid()}"
    save_file(tensors, tmp, metadata={SKELETON_KEY: json.dumps(skeleton)})
    os.replace(tmp, path)


def check_safetensors(path: str | Path) -> str | None:
    """Why ``path`` is not a whole safetensors file (header unreadable, data cut short), or None.

    The format: 8 bytes little-endian header length, a JSON header whose entries give each
    tensor's ``data_offsets`` into the data that follows; the file must reach the largest end."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            return "truncated"
        length = int.from_bytes(prefix, "little")
        if 8 + length > size:
            return "truncated"
        try:
            header = json.loads(f.read(length))
            end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
        except (ValueError, KeyError, TypeError, IndexError, AttributeError):
            return "has a corrupt header"
    return "truncated" if 8 + length + end > size else None


def load_tree(path: str | Path, device: str | torch.device = "cpu") -> Any:
    with safe_open(str(path), framework="pt", device=str(device)) as f:
        skeleton = json.loads(f.metadata()[SKELETON_KEY])
        tensors = {key: f.get_tensor(key) for key in f.keys()}
    return _decode(skeleton, tensors)


def _make_engine_class():
    from deepspeed.runtime.checkpoint_engine.checkpoint_engine import CheckpointEngine

    class SafetensorsCheckpointEngine(CheckpointEngine):
        """DeepSpeed checkpoint engine that writes ``save_tree`` files (names unchanged)."""

        def __init__(self, config_params=None):
            super().__init__(config_params)
            self.name = "SafetensorsCheckpointEngine"

        def create(self, info):
            pass

        def save(self, state_dict, path: str):
            save_tree(state_dict, path)

        def load(self, path: str, map_location=None):
            return load_tree(path, "cpu")

        def commit(self, info):
            return True

        def preserves_storage_sharing(self):
            return False

    return SafetensorsCheckpointEngine


def safetensors_checkpoint_engine():
    return _make_engine_class()()
