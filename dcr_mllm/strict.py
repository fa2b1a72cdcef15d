"""Parsing the JSON and YAML users hand us strictly: a key written twice is an error.

Both formats accept a repeated key and keep the last value, so two pasted snippets that both set
``projector_stage:`` silently lose the first one's settings. Every config, DeepSpeed file,
conversation file and results file is read through here; the error names the file, the key and
both lines.

JSON is parsed by the C decoder with a hook that only notices a repeat; the lines are found by a
second, plain scan that runs only then, so a 1 GB conversation file costs one parse. YAML is
composed into nodes first (which keeps each key's line and leaves tags such as lmms-eval's
``!function`` unresolved), checked, then loaded with the safe loader.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from dcr_mllm.errors import DcrError


def read_text(path: str | Path) -> str:
    """A UTF-8 text file, or a one-line error naming the file and the first bad byte."""
    path = Path(path)
    try:
        return path.read_bytes().decode("utf-8-sig")
    except OSError as err:
        raise DcrError(f"cannot read {path}: {err.strerror or err}") from err
    except UnicodeDecodeError as err:
        raise DcrError(
            f"{path} is not UTF-8 text (byte {err.object[err.start]:#04x} at offset {err.start}); re-save it as UTF-8"
        ) from err


def read_json(path: str | Path) -> object:
    """A JSON file, strictly (``loads_json``)."""
    return loads_json(read_text(path), str(path))


def read_yaml(path: str | Path) -> object:
    """A YAML file, strictly (``loads_yaml``)."""
    return loads_yaml(read_text(path), str(path))


class _Repeated(Exception):
    pass


def _unique_pairs(pairs: list[tuple[str, object]]) -> dict:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise _Repeated
    return obj


def loads_json(text: str, source: str) -> object:
    """``json.loads`` that refuses a key repeated within one object; ``source`` names the file
    (and line, for JSON Lines) in the error."""
    try:
        return json.loads(text, object_pairs_hook=_unique_pairs)
    except json.JSONDecodeError as err:
        raise DcrError(
            f"{source} is not valid JSON ({err.msg} at line {err.lineno} column {err.colno}); "
            "re-download or re-create it"
        ) from err
    except _Repeated:
        key, first, second = _repeated_json_key(text)
        raise DcrError(_repeat_message(source, key, first, second)) from None


_JSON_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[{}\[\]:,]|[^\s{}\[\]:,"]+')


def _repeated_json_key(text: str) -> tuple[str, int, int]:
    """The first key repeated within one object of valid JSON ``text``, with the lines of both."""
    objects: list[dict | None] = []  # per open container: key -> line for an object, None for an array
    expect_key, line, scanned = False, 1, 0
    for match in _JSON_TOKEN.finditer(text):
        token = match.group()
        if token in ("{", "["):
            objects.append({} if token == "{" else None)
            expect_key = token == "{"
        elif token in ("}", "]"):
            objects.pop()
            expect_key = False
        elif token == ",":
            expect_key = bool(objects) and objects[-1] is not None
        elif expect_key:
            line += text.count("\n", scanned, match.start())
            scanned = match.start()
            key = json.loads(token)
            if key in objects[-1]:
                return key, objects[-1][key], line
            objects[-1][key] = line
            expect_key = False
    raise AssertionError("no repeated key found in JSON the decoder saw one in")


def loads_yaml(text: str, source: str) -> object:
    """``yaml.safe_load`` that refuses a key repeated within one mapping."""
    check_yaml_keys(text, source)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise DcrError(f"{source} is not valid YAML ({_one_line(err)}); fix the syntax") from err


def check_yaml_keys(text: str, source: str) -> None:
    """Refuse a repeated key in YAML that is loaded elsewhere (lmms-eval's task files, with their tags)."""
    try:
        for document in yaml.compose_all(text, Loader=yaml.SafeLoader):
            _check_yaml_keys(document, source)
    except yaml.YAMLError as err:
        raise DcrError(f"{source} is not valid YAML ({_one_line(err)}); fix the syntax") from err


def _check_yaml_keys(node: yaml.Node | None, source: str) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: dict[tuple[str, str], int] = {}
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key, line = (key_node.tag, key_node.value), key_node.start_mark.line + 1
                if key in seen:
                    raise DcrError(_repeat_message(source, key_node.value, seen[key], line))
                seen[key] = line
            _check_yaml_keys(value_node, source)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _check_yaml_keys(item, source)


def _repeat_message(source: str, key: str, first: int, second: int) -> str:
    return (
        f"{source}: key '{key}' is written twice (lines {first} and {second}), and only the second would count; "
        "keep one of them"
    )


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split())
