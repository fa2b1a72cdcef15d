from dataclasses import dataclass, field
from typing import Literal

import pytest

from dcr_mllm.config import load_config
from dcr_mllm.errors import ConfigError


@dataclass
class Inner:
    width: int = 8
    rate: float = 0.1
    mode: Literal["a", "b"] = "a"
    targets: list[str] = field(default_factory=lambda: ["q"])


@dataclass
class Outer:
    name: str = "x"
    seed: int = 0
    path: str | None = None
    inner: Inner = field(default_factory=Inner)


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: run\ninner:\n  width: 16\n  rate: 1\n")
    cfg = load_config(Outer, path, ["seed=3", "inner.mode=b", "inner.targets=[fc1, fc2]", "path=/tmp/x"])
    assert cfg == Outer(name="run", seed=3, path="/tmp/x", inner=Inner(width=16, rate=1.0, mode="b", targets=["fc1", "fc2"]))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["inner.widht=3"], "unknown config key 'inner.widht'"),
        (["seed=abc"], "config key 'seed' must be int"),
        (["inner.mode=c"], "config key 'inner.mode' must be one of"),
        (["inner=3"], "config key 'inner' is a section"),
        (["seed"], "is not key=value"),
    ],
)
def test_bad_input_names_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(Outer, None, overrides)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Outer, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Outer, bad)
