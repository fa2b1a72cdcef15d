"""Typed configs: dataclasses loaded from YAML, with ``key=value`` overrides from the command line.

Every recipe declares its config as a tree of dataclasses. Loading checks every key and type
against that tree, so a typo or a wrong type is an error naming the key before any model is
loaded. Overrides use dotted paths (``model.lora_r=8``) and YAML syntax for values.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from dcr_mllm.errors import ConfigError
from dcr_mllm.strict import check_yaml_keys, read_text

T = TypeVar("T")

#: the tiny embedded default configs, shipped inside the package (the CLI's default ``--config``)
PACKAGED_CONFIGS = Path(__file__).resolve().parent / "configs"


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] = ()) -> T:
    """Build ``cls`` from a YAML file (optional) and ``key=value`` overrides, checking every key."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist; pass an existing YAML file")
        text = read_text(path)
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {path} is not valid YAML ({err}); fix the syntax") from err
        check_yaml_keys(text, f"config file {path}")
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping of keys, not {type(data).__name__}")
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not key=value; write e.g. seed=1")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as err:
            raise ConfigError(
                f"override {item!r}: {raw!r} is not a YAML value; quote strings and close brackets, e.g. key=[1, 2]"
            ) from err
        check_yaml_keys(raw, f"override {item!r}")
        _set_dotted(data, key.strip(), value)
    return from_dict(cls, data)


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build a dataclass from a nested mapping; unknown keys and wrong types name the key."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"unknown config key '{prefix}{key}'; known keys here: {known}")
    hints = typing.get_type_hints(cls)
    required = [
        name
        for name, f in fields.items()
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and name not in data
    ]
    if required:
        raise ConfigError(
            f"config lacks '{prefix}{required[0]}' (required, no default); set it in the config file or as "
            f"{prefix}{required[0]}=VALUE, e.g. a preset name or a local directory"
        )
    kwargs = {}
    for name, value in data.items():
        default_factory = fields[name].default_factory
        if (
            dataclasses.is_dataclass(hints[name])
            and isinstance(value, dict)
            and default_factory is not dataclasses.MISSING
        ):
            # a section given in part keeps the field's own defaults for the rest
            value = _merge(dataclasses.asdict(default_factory()), value)
        kwargs[name] = _coerce(hints[name], value, prefix + name)
    return cls(**kwargs)


def to_dict(config: Any) -> dict[str, Any]:
    """Plain nested dict of a config (for YAML dumps, model cards, checkpoints)."""
    return dataclasses.asdict(config)


def config_yaml(config: Any) -> str:
    """The config as YAML, keys in declaration order (``--print-config``, model cards)."""
    return yaml.safe_dump(to_dict(config), sort_keys=False)


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        merged[key] = _merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return merged


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override '{key}': '{part}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def _coerce(hint: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(option, value, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else f"config key '{key}': {value!r} fits none of {hint}")
    if origin is typing.Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise ConfigError(f"config key '{key}' must be one of {list(choices)}, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}' must be a list, got {value!r}")
        (item_hint, *_) = typing.get_args(hint) or (Any,)
        items = [_coerce(item_hint, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' must be a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' is a section; give it a mapping, not {value!r}")
        return from_dict(hint, value, prefix=key + ".")
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
        try:
            return float(value)
        except ValueError as err:
            raise ConfigError(f"config key '{key}' must be a number, got {value!r}") from err
    if hint is bool and not isinstance(value, bool):
        raise ConfigError(f"config key '{key}' must be true or false, got {value!r}")
    if hint is int and isinstance(value, bool):
        raise ConfigError(f"config key '{key}' must be an integer, got {value!r}")
    if hint is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if isinstance(hint, type) and not isinstance(value, hint):
        raise ConfigError(f"config key '{key}' must be {hint.__name__}, got {value!r}")
    return value
