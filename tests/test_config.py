import json
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
    assert cfg == Outer(
        name="run", seed=3, path="/tmp/x", inner=Inner(width=16, rate=1.0, mode="b", targets=["fc1", "fc2"])
    )


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


def test_numbers_without_a_dot_are_numbers_and_bad_yaml_is_named():
    assert load_config(Outer, None, ["inner.rate=1e-3"]).inner.rate == 1e-3
    with pytest.raises(ConfigError, match="must be a number"):
        load_config(Outer, None, ["inner.rate=fast"])
    with pytest.raises(ConfigError, match="is not a YAML value"):
        load_config(Outer, None, ["seed=[1"])


@dataclass
class NeedsTower:
    tower: str
    seed: int = 0


def test_a_required_key_is_named():
    with pytest.raises(ConfigError, match="config lacks 'tower'"):
        load_config(NeedsTower, None, ["seed=1"])


@dataclass
class Plain:
    name: Literal["plain"] = "plain"
    shared: int = 1


@dataclass
class Fancy:
    name: Literal["fancy"] = "fancy"
    shared: int = 1
    level: int = 2


@dataclass
class Tagged:
    part: Plain | Fancy = field(default_factory=lambda: Plain(shared=5))


def test_a_tagged_section_takes_the_keys_its_name_picks(tmp_path):
    assert load_config(Tagged, None, []).part == Plain(shared=5)
    assert load_config(Tagged, None, ["part.shared=6"]).part == Plain(shared=6)  # the field's default completes it
    assert load_config(Tagged, None, ["part.name=fancy", "part.level=3"]).part == Fancy(shared=1, level=3)
    with pytest.raises(ConfigError, match=r"unknown config key 'part.level' for part 'plain'; its keys: name, shared"):
        load_config(Tagged, None, ["part.level=3"])
    with pytest.raises(ConfigError, match=r"config key 'part.name' must be one of \['plain', 'fancy'\]"):
        load_config(Tagged, None, ["part.name=other"])
    # an override of the name drops the file's keys the new kind lacks; an override's own keys stay checked
    path = tmp_path / "c.yaml"
    path.write_text("part:\n  name: fancy\n  shared: 7\n  level: 3\n")
    assert load_config(Tagged, path, ["part.name=plain"]).part == Plain(shared=7)
    with pytest.raises(ConfigError, match="unknown config key 'part.level' for part 'plain'"):
        load_config(Tagged, path, ["part.level=4", "part.name=plain"])


# ---------------------------------------------------------------- the recipes' configs, through the CLI

from pathlib import Path  # noqa: E402

import yaml  # noqa: E402

from dcr_mllm.cli import main  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("command", ["enhance", "llava-pretrain", "llava-finetune"])
def test_print_config_resolves_without_building(command, capsys, tmp_path):
    out_dir = tmp_path / "never_written"
    code, out, err = run([command, "--print-config", f"output_dir={out_dir}", "seed=7"], capsys)
    assert code == 0, err
    printed = yaml.safe_load(out)
    assert printed["seed"] == 7 and printed["output_dir"] == str(out_dir)
    assert printed["tower"]  # the packaged tiny config names its models
    stages = ("projector_stage", "lora_stage") if command == "enhance" else ("pretrain", "finetune")
    assert all(printed[s]["zero_stage"] in (0, 1, 2, 3) for s in stages)  # resolved, not left empty
    assert not out_dir.exists()


def test_print_config_takes_the_zero_stage_from_the_deepspeed_json(capsys):
    code, out, err = run(
        ["llava-finetune", "--config", str(REPO / "stages/configs/llava_7b.yaml"), "--print-config"], capsys
    )
    assert code == 0, err
    printed = yaml.safe_load(out)
    assert printed["finetune"]["zero_stage"] == 3 and printed["pretrain"]["zero_stage"] == 2


@pytest.mark.parametrize(
    "command, overrides, message",
    [
        ("enhance", ["tower=null"], "tower"),
        ("enhance", ["projector_stage.save_every=0"], "projector_stage.save_every must be at least 1"),
        ("enhance", ["lora_stage.log_every=0"], "lora_stage.log_every must be at least 1"),
        ("enhance", ["lora_stage.lr=-1.0"], "lora_stage.lr must be 0 or more"),
        ("enhance", ["lora_stage.betas=[0.9]"], "lora_stage.betas must be two numbers"),
        ("enhance", ["projector_stage.epochs=1"], "projector_stage.epochs is not read by stage one"),
        ("enhance", ["lora_stage.gradient_checkpointing=true"], "not read by stage one"),
        ("enhance", ["objective.tau=0"], "objective.tau must be positive"),
        ("enhance", ["seed=[1"], "is not a YAML value"),
        (
            "enhance",
            ["projector_stage.zero_stage=3", "projector_stage.deepspeed=stages/deepspeed/zero2.json"],
            f"projector_stage.zero_stage is 3 but {REPO / 'stages/deepspeed/zero2.json'} says zero_optimization.stage 2",
        ),
        ("enhance", ["lora_stage.deepspeed=missing.json"], f"DeepSpeed config {REPO / 'missing.json'} does not exist"),
        (
            "enhance",
            ["data.shards=/d/00000.tar", "data.shards=/d/00001.tar", "data.shards=/d/00002.tar"],
            "override data.shards given 3 times (/d/00000.tar, /d/00001.tar ...); quote the value",
        ),
        ("llava-pretrain", ["pretrain.micro_batch_size=0"], "pretrain.micro_batch_size must be at least 1"),
        ("llava-finetune", ["language_model=null"], "language_model"),
        ("llava-finetune", ["finetune.epochs=0"], "finetune.max_steps and finetune.epochs are both 0; set one of them"),
        ("enhance", ["lora_stage.max_steps=0"], "lora_stage.max_steps and lora_stage.epochs are both 0"),
        (
            "enhance",
            ["objective.name=reconstruction", "objective.tau=0.2"],
            "unknown config key 'objective.tau' for objective 'reconstruction'",
        ),
        (
            "enhance",
            ["objective.name=reconstruction", "objective.augment.hflip=0.0", "objective.chunk_size=4"],
            "unknown config keys 'objective.augment', 'objective.chunk_size' for objective 'reconstruction'",
        ),
        (
            "enhance",
            ["objective.name=naive", "objective.negatives=global"],
            "unknown config key 'objective.negatives' for objective 'naive'",
        ),
        ("enhance", ["objective.naive_weight=2.0"], "unknown config key 'objective.naive_weight' for objective 'dcr'"),
        (
            "enhance",
            ["objective.checkpoint_chunks=false"],
            "objective.checkpoint_chunks is not read by objective.name=dcr",
        ),
        ("llava-finetune", ["lora.r=8"], "lora.r is read only with lora.enabled=true"),
    ],
)
def test_bad_config_values_fail_in_one_line_before_anything_runs(
    command, overrides, message, capsys, tmp_path, monkeypatch
):
    monkeypatch.chdir(REPO)
    out_dir = tmp_path / "out"
    code, _out, err = run([command, f"output_dir={out_dir}", *overrides], capsys)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out_dir.exists()


def test_debug_shows_the_traceback_of_a_user_error(capsys):
    from dcr_mllm.errors import DcrError

    with pytest.raises(DcrError, match="must be at least 1"):
        main(["--debug", "enhance", "--print-config", "lora_stage.save_every=0"])


def test_debug_keeps_the_cause_of_a_user_error(tmp_path):
    """The one-line message for users; under --debug the error it came from stays chained."""
    from dcr_mllm.errors import DcrError

    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: [1\n")
    with pytest.raises(DcrError, match="is not valid YAML") as raised:
        main(["--debug", "enhance", "--config", str(bad), "--print-config"])
    assert isinstance(raised.value.__cause__, yaml.YAMLError)
    with pytest.raises(DcrError, match="is not a YAML value") as raised:
        main(["--debug", "enhance", "--print-config", "seed=[1"])
    assert isinstance(raised.value.__cause__, yaml.YAMLError)


def _deepspeed_json(tmp_path, **values) -> Path:
    path = tmp_path / "ds.json"
    path.write_text(
        json.dumps(
            {
                "train_micro_batch_size_per_gpu": "auto",
                "zero_optimization": {"stage": 2, "overlap_comm": True},
                **values,
            }
        )
    )
    return path


def test_a_deepspeed_json_that_contradicts_the_config_is_refused_listing_every_key(tmp_path, capsys):
    ds = _deepspeed_json(
        tmp_path,
        gradient_clipping=0.5,
        gradient_accumulation_steps=4,
        bf16={"enabled": False},
        optimizer={"type": "AdamW", "params": {"lr": 0.1, "eps": "auto"}},
        scheduler={"type": "WarmupLR"},
    )
    code, _, err = run(["enhance", "--print-config", f"lora_stage.deepspeed={ds}", "lora_stage.precision=bf16"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    for part in (
        "gradient_clipping: 0.5 vs grad_clip 1.0",
        "gradient_accumulation_steps: 4 vs grad_accum 1",
        "bf16.enabled: False vs precision True",
        "optimizer.params.lr: 0.1 vs lr ",
        "scheduler: ",
    ):
        assert part in err, part
    assert (
        "optimizer.params.eps" not in err and "train_micro_batch_size_per_gpu" not in err
    )  # "auto" takes the config's


def test_deepspeed_json_values_that_agree_or_are_auto_are_kept(tmp_path, capsys):
    from dcr_mllm.training.config import TrainConfig, resolve_train_config
    from dcr_mllm.training.distributed import DistInfo
    from dcr_mllm.training.ds_config import deepspeed_config

    ds = _deepspeed_json(tmp_path, gradient_clipping=1.0, bf16={"enabled": True})
    cfg = resolve_train_config(TrainConfig(deepspeed=str(ds)), "stage")
    assert cfg.precision == "bf16"  # the config left it to "auto": the file decides, and the config says so
    import torch

    merged = deepspeed_config(cfg, DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu")))
    assert (
        merged["zero_optimization"] == {"stage": 2, "overlap_comm": True}
        and merged["train_micro_batch_size_per_gpu"] == 8
    )
    assert merged["bf16"] == {"enabled": True} and merged["gradient_clipping"] == 1.0


def test_print_config_says_which_setting_sets_the_steps(capsys):
    code, out, _ = run(["llava-finetune", "--print-config", "finetune.max_steps=3"], capsys)
    assert code == 0
    assert "# finetune: the number of steps is set by max_steps (3 steps)" in out
    assert "# pretrain: the number of steps is set by epochs (2 passes over the data)" in out


def test_options_and_overrides_mix_in_any_order(capsys, tmp_path):
    code, out, err = run(
        [
            "enhance",
            "--config",
            str(REPO / "dcr_mllm/configs/enhance_tiny.yaml"),
            f"output_dir={tmp_path / 'x'}",
            "--stage",
            "projector",
            "projector_stage.max_steps=30",
            "--print-config",
            "seed=4",
        ],
        capsys,
    )
    assert code == 0, err
    printed = yaml.safe_load(out)
    assert (
        printed["projector_stage"]["max_steps"] == 30
        and printed["seed"] == 4
        and printed["output_dir"] == str(tmp_path / "x")
    )
    with pytest.raises(SystemExit):
        main(["enhance", "--print-config", "--no-such-option"])
    assert "unrecognized arguments: --no-such-option" in capsys.readouterr().err


def test_every_override_example_in_the_cli_help_does_what_it_says(capsys):
    """Each ``e.g.`` in a command's override help, run with --print-config, sets exactly those values."""
    import re

    from dcr_mllm.cli import build_parser

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    checked = 0
    for name, sub in commands.items():
        for action in sub._actions:
            if action.dest != "overrides":
                continue
            example = re.search(r"e\.g\. (.*)$", action.help).group(1).split()
            code, out, err = run([name, "--print-config", *example], capsys)
            assert code == 0, err
            printed = yaml.safe_load(out)
            for item in example:
                key, value = item.split("=")
                node = printed
                for part in key.split("."):
                    node = node[part]
                assert node == yaml.safe_load(value), (name, item)
                if key.endswith("max_steps"):
                    assert f"# {key.split('.')[0]}: the number of steps is set by max_steps ({value} steps)" in out
            checked += 1
    assert checked == 3  # enhance, llava-pretrain, llava-finetune
