"""Each objective owns its settings: ``objective.name`` picks the dataclass, whose keys alone the
section takes; the ablation makes one shared config each objective's."""

import dataclasses
import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml

from dcr_mllm.cli import main
from dcr_mllm.config import PACKAGED_CONFIGS, load_config
from dcr_mllm.enhance.config import EnhanceConfig
from dcr_mllm.objectives.augment import AugmentConfig
from dcr_mllm.objectives.model import OBJECTIVES
from dcr_mllm.objectives.settings import SETTINGS, DcrSettings, NaiveSettings, ObjectiveConfig, ReconstructionSettings

WORLD = PACKAGED_CONFIGS / "enhance_world.yaml"
REPO = Path(__file__).resolve().parents[2]


def test_every_objective_has_its_settings_and_the_config_knows_them_all():
    assert {name: objective.settings for name, objective in OBJECTIVES.items()} == SETTINGS
    assert set(typing.get_args(ObjectiveConfig)) == set(SETTINGS.values())
    assert all(cls().name == name for name, cls in SETTINGS.items())


def test_switching_the_objective_by_override_prints_its_keys_only(capsys):
    assert main(["enhance", "--print-config", "objective.name=naive", "objective.naive_weight=2"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)["objective"]
    assert list(printed) == [f.name for f in dataclasses.fields(NaiveSettings)] and printed["naive_weight"] == 2.0
    # the world config's DCR settings (tau, negatives) are left behind; its shared ones stay
    cfg = load_config(EnhanceConfig, WORLD, ["objective.name=reconstruction"])
    assert cfg.objective == ReconstructionSettings(condition="tokens")


NO_FLIP = AugmentConfig(hflip=0.0)  # the world config's


@pytest.mark.parametrize(
    "variant, expected",
    [
        ("reconstruction", ReconstructionSettings()),
        ("naive", NaiveSettings(augment=NO_FLIP)),
        ("dcr", DcrSettings(negatives="global", num_negatives=2, augment=NO_FLIP)),
        (
            "dcr_tokens",
            DcrSettings(condition="tokens", condition_tokens=8, negatives="global", num_negatives=2, augment=NO_FLIP),
        ),
    ],
)
def test_the_ablation_makes_the_shared_config_each_objectives(variant, expected):
    """The shared settings each objective reads carry over (condition_tokens only with tokens); another's never reach it."""
    from dcr_mllm.enhance.world_runs import VARIANTS, objective_overrides

    shared = ["objective.num_negatives=2", "objective.condition_tokens=8"]
    own = objective_overrides(WORLD, shared, VARIANTS[variant])
    assert load_config(EnhanceConfig, WORLD, [*shared, *own]).objective == expected


def test_the_ablations_own_settings_replace_a_users_same_keys_each_given_once(tmp_path):
    from dcr_mllm.config import override_key
    from dcr_mllm.enhance.world_runs import VARIANTS, objective_overrides, train_args

    user = ["seed=7", "lora_stage.max_steps=3", "objective.tau=0.2", f"output_dir={tmp_path / 'mine'}"]
    ours = [f"output_dir={tmp_path / 'run'}", "seed=1", *objective_overrides(WORLD, user, VARIANTS["naive"])]
    overrides = train_args(WORLD, user, ours)[6:]
    keys = [override_key(item) for item in overrides]
    assert len(keys) == len(set(keys))
    cfg = load_config(EnhanceConfig, WORLD, overrides)  # a key given twice would be refused
    assert (cfg.seed, cfg.output_dir, cfg.lora_stage.max_steps) == (1, str(tmp_path / "run"), 3)
    assert cfg.objective.name == "naive"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["reconstruction", "naive"])
def test_enhance_runs_an_objective_without_dcrs_settings(name, tiny, tmp_path):
    """Nothing outside the DCR objective reads a DCR setting: both stages train and export a tower."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DCR_MLLM_CACHE": str(Path(tiny["clip"]).parents[1])}
    steps = [
        f"{stage}.{key}={value}"
        for stage in ("projector_stage", "lora_stage")
        for key, value in (("max_steps", 1), ("micro_batch_size", 2), ("num_workers", 0))
    ]
    args = ["enhance", f"output_dir={tmp_path}", f"objective.name={name}", "data.synthetic_samples=8", *steps]
    result = subprocess.run(
        [sys.executable, "-m", "dcr_mllm.cli", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"- objective: `{name}` (target `auto`)" in (tmp_path / "tower" / "README.md").read_text()
