"""Strict parsing: a key written twice in JSON or YAML is refused, naming the file, the key and both lines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dcr_mllm.errors import DcrError
from dcr_mllm.strict import check_yaml_keys, loads_json, loads_yaml, read_json, read_text

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("text", "key", "lines"),
    [
        ('{"a": 1,\n "a": 2}', "a", (1, 2)),
        ('{"x": {"lr": 1,\n\n "lr": 2}}', "lr", (1, 3)),
        ('[{"k": 1}, {"k": 2},\n {"k": 3,\n "k": 4}]', "k", (2, 3)),
        ('{"s": "{\\"a\\": 1, \\"a\\": 2}",\n "q\\"t": 1, "q\\"t": [1, {"z": 0}]}', 'q"t', (2, 2)),
        ('{"outer": [1, 2], "list": [{"a": 1}], "a": 0,\n"outer": 3}', "outer", (1, 2)),
    ],
)
def test_json_key_written_twice_is_named_with_both_lines(text, key, lines):
    with pytest.raises(DcrError) as raised:
        loads_json(text, "f.json")
    assert str(raised.value).startswith(f"f.json: key '{key}' is written twice (lines {lines[0]} and {lines[1]})")


def test_json_without_repeats_parses_as_json_does():
    text = '{"a": {"a": 1}, "b": [{"a": 2}, {"a": 3}], "s": "x\\"y", "n": null, "e": 1e-3}'
    assert loads_json(text, "f.json") == json.loads(text)
    with pytest.raises(DcrError, match=r"f.json is not valid JSON \(Expecting"):
        loads_json('{"a": ', "f.json")


@pytest.mark.parametrize(
    ("text", "key", "lines"),
    [
        ("projector_stage:\n  lr: 1.0e-3\nseed: 0\nprojector_stage:\n  max_steps: 5\n", "projector_stage", (1, 4)),
        ("objective:\n  name: dcr\n  # comment\n  name: naive\n", "name", (2, 4)),
        ("runs:\n  - {a: 1, b: 2}\n  - {a: 1, a: 2}\n", "a", (3, 3)),
    ],
)
def test_yaml_key_written_twice_is_named_with_both_lines(text, key, lines):
    with pytest.raises(DcrError) as raised:
        loads_yaml(text, "c.yaml")
    assert str(raised.value).startswith(f"c.yaml: key '{key}' is written twice (lines {lines[0]} and {lines[1]})")


def test_yaml_same_key_in_different_mappings_and_merge_keys_are_fine():
    text = "base: &b {lr: 1}\na: {<<: *b, x: 1}\nb: {<<: *b, x: 2}\nc:\n  lr: 2\n"
    assert loads_yaml(text, "c.yaml") == {
        "base": {"lr": 1},
        "a": {"lr": 1, "x": 1},
        "b": {"lr": 1, "x": 2},
        "c": {"lr": 2},
    }
    check_yaml_keys("process_results: !function utils.process\nmetric: acc\n", "task.yaml")  # tags stay unresolved


def test_every_shipped_yaml_and_json_is_strict():
    """The configs, DeepSpeed files, lmms-eval tasks and result files the project ships hold no repeated key."""
    files = [
        p
        for pattern in ("*.yaml", "*_yaml", "*.json")
        for folder in ("dcr_mllm", "stages", "eval_tasks", "bench")
        for p in (ROOT / folder).rglob(pattern)
    ]
    assert len(files) > 40
    for path in files:
        if path.suffix == ".json":
            read_json(path)
        else:
            check_yaml_keys(read_text(path), str(path))


def test_a_config_with_a_section_written_twice_is_refused_in_one_line(tmp_path, capsys):
    from dcr_mllm.cli import main

    config = tmp_path / "pasted.yaml"
    config.write_text(
        "seed: 0\nprojector_stage:\n  lr: 0.01\nlora_stage:\n  max_steps: 3\nprojector_stage:\n  max_steps: 4\n"
    )
    assert main(["enhance", "--config", str(config), "--print-config"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"error: config file {config}: key 'projector_stage' is written twice (lines 2 and 6), and only the second "
        "would count; keep one of them"
    )
    assert main(["enhance", "--print-config", "objective={name: dcr, name: naive}"]) == 2
    assert "override 'objective={name: dcr, name: naive}': key 'name' is written twice" in capsys.readouterr().err
