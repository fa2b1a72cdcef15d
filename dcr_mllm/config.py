"""Typed configs: dataclasses loaded from YAML, with ``key=value`` overrides from the command line.

Every recipe declares its config as a tree of dataclasses. Loading checks every key and type
against that tree, so a typo or a wrong type is an error naming the key before any model is
loaded. Overrides use dotted paths (``model.lora_r=8``) and YAML syntax for values.

A field typed as a union of dataclasses, each with a one-value ``name: Literal[...]``, is a tagged
section (stage one's ``objective``): its ``name`` picks the dataclass, whose keys alone it takes.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from dcr_mllm.errors import ConfigError
from dcr_mllm.strict import check_yaml_keys, read_text

T = TypeVar("T")
TAG = "name"  # the key that picks a tagged section's dataclass

#: the tiny embedded default configs, shipped inside the package (the CLI's default ``--config``)
PACKAGED_CONFIGS = Path(__file__).resolve().parent / "configs"


#: field metadata of a key naming a file the config depends on (a DeepSpeed JSON): in a config file
#: it is relative to that file, in a ``key=value`` override to the working directory; the loaded
#: config holds it absolute, so the same config names the same file from any working directory
CONFIG_RELATIVE = {"path": "relative to the config file that states it"}


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] = ()) -> T:
    """Build ``cls`` from a YAML file and ``key=value`` overrides, checking every key.

    Args:
        cls: the config dataclass.
        path: the YAML file (optional), its ``inherit:`` chain merged in (``read_config_file``).
        overrides: ``dotted.key=value`` items, values in YAML syntax; they win over the file. A key
            given twice is refused (an unquoted shell pattern splits into several words).
    """
    data: dict[str, Any] = read_config_file(path, cls) if path is not None else {}
    given = parse_overrides(overrides)
    keys = path_keys(cls)
    given = [(key, _resolve_override(key, value, keys)) for key, value in given]
    for key, value in dict(given).items():
        _switch_kind(cls, data, key, value)
    for key, value in given:
        _set_dotted(data, key, value)
    return from_dict(cls, data)


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    """``[(dotted key, YAML value)]`` of ``key=value`` items; a malformed item or a key given twice
    is a ConfigError naming it."""
    given: list[tuple[str, Any]] = []
    raws: dict[str, list[str]] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not key=value; write e.g. seed=1")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as err:
            raise ConfigError(
                f"override {item!r}: {raw!r} is not a YAML value; quote strings and close brackets, e.g. key=[1, 2]"
            ) from err
        check_yaml_keys(raw, f"override {item!r}")
        given.append((key.strip(), value))
        raws.setdefault(key.strip(), []).append(raw)
    for key, values in raws.items():
        if len(values) > 1:
            times = "twice" if len(values) == 2 else f"{len(values)} times"
            shown = ", ".join(values[:2]) + (" ..." if len(values) > 2 else "")
            raise ConfigError(
                f"override {key} given {times} ({shown}); quote the value so that the shell passes it as one word "
                f"({key}='...'), or give the key once"
            )
    return given


def override_key(item: str) -> str:
    """The dotted key of a ``key=value`` override."""
    return item.partition("=")[0].strip()


def merge_overrides(*groups: list[str]) -> list[str]:
    """Several lists of overrides as one, each key once: a later list's item replaces an earlier
    one's (a program's own settings over the user's), so that ``load_config`` accepts the result."""
    merged: dict[str, str] = {}
    for group in groups:
        for item in group:
            merged.pop(override_key(item), None)
            merged[override_key(item)] = item
    return list(merged.values())


def path_keys(cls: Any) -> frozenset[str]:
    """The names of the fields marked ``CONFIG_RELATIVE`` anywhere in ``cls``'s tree of sections."""
    names: set[str] = set()
    todo, seen = [cls], set()
    while todo:
        owner = todo.pop()
        if not dataclasses.is_dataclass(owner):  # a union, list, Literal...: the types inside it
            todo += typing.get_args(owner)
            continue
        if owner in seen:
            continue
        seen.add(owner)
        hints = typing.get_type_hints(owner)
        for f in dataclasses.fields(owner):
            if f.metadata.get("path") == CONFIG_RELATIVE["path"]:
                names.add(f.name)
            todo.append(hints[f.name])
    return frozenset(names)


def _resolve_override(key: str, value: Any, keys: frozenset[str]) -> Any:
    """An override's value with its paths (``keys``) made absolute against the working directory."""
    last = key.rsplit(".", 1)[-1]
    return _resolve_paths({last: value}, keys, Path.cwd())[last]


def _resolve_paths(data: Any, keys: frozenset[str], base: Path) -> Any:
    """``data`` with every non-empty string under a key of ``keys``, at any depth, made absolute
    against ``base`` (an absolute path stays as it is)."""
    if isinstance(data, list):
        return [_resolve_paths(item, keys, base) for item in data]
    if not isinstance(data, dict):
        return data
    return {
        key: os.path.abspath(base / value)
        if key in keys and isinstance(value, str) and value
        else _resolve_paths(value, keys, base)
        for key, value in data.items()
    }


#: the key naming the file a config builds on (a path relative to the file that has it)
INHERIT = "inherit"


def read_config_file(path: str | Path, cls: type | None = None) -> dict[str, Any]:
    """The mapping a config file holds, merged over the files it inherits from.

    ``inherit: PATH`` (relative to the file) names a parent, read the same way, so a chain of files
    shares one recipe and each states only what differs: the child wins key by key, sections merge,
    lists replace. Each file is checked on its own (YAML syntax, repeated keys); the merged mapping is
    then checked as one config by ``from_dict``. Given the config dataclass ``cls``, the keys it marks
    ``CONFIG_RELATIVE`` are made absolute against the file that states them."""
    return _read_chain(Path(path), [], path_keys(cls) if cls is not None else frozenset())


def _read_chain(path: Path, children: list[Path], keys: frozenset[str]) -> dict[str, Any]:
    data = _resolve_paths(_read_mapping(path, children[-1] if children else None), keys, path.parent)
    parent = data.pop(INHERIT, None)
    if parent is None:
        return data
    if not isinstance(parent, str) or not parent.strip():
        raise ConfigError(
            f"config file {path}: inherit: {parent!r} is not a path; name the parent YAML file relative to this "
            "one, e.g. inherit: ../base/enhance.yaml"
        )
    chain = [*children, path]
    parent_path = path.parent / parent
    if parent_path.resolve() in {p.resolve() for p in chain}:
        cycle = " -> ".join(str(p) for p in [*chain, parent_path])
        raise ConfigError(
            f"config file {path}: inherit: {parent} makes a cycle ({cycle}); remove one of these inherit: keys"
        )
    if not parent_path.is_file():
        raise ConfigError(
            f"config file {path}: inherit: {parent} does not exist ({parent_path}); give a path relative to {path.parent}"
        )
    return _merge(_read_chain(parent_path, chain, keys), data)


def _read_mapping(path: Path, child: Path | None) -> dict[str, Any]:
    """One config file's own mapping (``child``: the file that inherits it, named in its errors)."""
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass an existing YAML file")
    text = read_text(path)
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML ({err}); fix the syntax") from err
    check_yaml_keys(text, f"config file {path}")
    if not isinstance(data, dict):
        inherited = f" (inherited by {child})" if child else ""
        raise ConfigError(f"config file {path}{inherited} must hold a mapping of keys, not {type(data).__name__}")
    return data


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build a dataclass from a nested mapping; unknown keys and wrong types name the key."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [key for key in data if key not in fields]
    if unknown:
        named = ", ".join(f"'{prefix}{key}'" for key in unknown)
        keys = f"key{'s' if len(unknown) > 1 else ''} {named}"
        known = ", ".join(sorted(fields))
        tag = _tag(cls)
        if tag is None:
            raise ConfigError(f"unknown config {keys}; known keys here: {known}")
        section = prefix.rstrip(".").rsplit(".", 1)[-1]
        raise ConfigError(f"unknown config {keys} for {section} '{tag}'; its keys: {known}")
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
        default = _section_default(fields[name], value)
        if default is not None:  # a section given in part keeps the field's own defaults for the rest
            value = _merge(dataclasses.asdict(default), value)
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


def _section_default(field: dataclasses.Field, value: Any) -> Any:
    """The field's default section that ``value`` (a mapping) completes, or None: none for a tagged
    section whose ``name`` picks another dataclass than the default's."""
    if not isinstance(value, dict) or field.default_factory is dataclasses.MISSING:
        return None
    default = field.default_factory()
    if not dataclasses.is_dataclass(default):
        return None
    tag = _tag(type(default))
    return default if tag is None or value.get(TAG, tag) == tag else None


def _tag(cls: Any) -> str | None:
    """The one ``name`` that picks dataclass ``cls`` in a tagged section, or None."""
    if not dataclasses.is_dataclass(cls):
        return None
    hint = typing.get_type_hints(cls).get(TAG)
    choices = typing.get_args(hint) if typing.get_origin(hint) is typing.Literal else ()
    return choices[0] if len(choices) == 1 else None


def tagged_kinds(hint: Any) -> dict[str, type] | None:
    """A tagged section's dataclasses by ``name`` (a union of dataclasses, each with one-value
    ``name: Literal[...]``), or None for any other type."""
    if typing.get_origin(hint) not in (typing.Union, types.UnionType):
        return None
    kinds = {_tag(option): option for option in typing.get_args(hint)}
    return None if None in kinds else kinds


def _switch_kind(cls: type, data: dict[str, Any], key: str, value: Any) -> None:
    """An override of a tagged section's ``name`` (``objective.name=naive`` over a file's ``objective:
    {name: dcr, tau: 0.1}``) drops the file's keys of that section the new dataclass lacks: the other
    kind's settings. Keys given as overrides are applied after, and checked."""
    *path, last = key.split(".")
    if last != TAG or not path or not isinstance(value, str):
        return
    node, owner = data, cls
    for depth, part in enumerate(path):
        fields = {f.name: f for f in dataclasses.fields(owner)} if dataclasses.is_dataclass(owner) else {}
        if part not in fields or not isinstance(node.get(part), dict):
            return
        hint, node = typing.get_type_hints(owner)[part], node[part]
        kinds = tagged_kinds(hint)
        default = _section_default(fields[part], {})
        current = node.get(TAG, getattr(default, TAG, None))
        if kinds and not isinstance(current, str):
            return
        if depth < len(path) - 1:
            owner = kinds.get(current) if kinds else hint
        elif kinds and value in kinds and value != current:
            keep = {f.name for f in dataclasses.fields(kinds[value])}
            for other in [k for k in node if k not in keep]:
                del node[other]


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
    kinds = tagged_kinds(hint)
    if kinds:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' is a section; give it a mapping, not {value!r}")
        name = value.get(TAG)
        if not isinstance(name, str) or name not in kinds:
            raise ConfigError(f"config key '{key}.{TAG}' must be one of {list(kinds)}, got {name!r}")
        return from_dict(kinds[name], value, prefix=key + ".")
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
