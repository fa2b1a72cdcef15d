"""The tiny world: labelled scenes, its trained base models (miniature builds) and the ablation driver."""

import csv
import json
import math
import os
import subprocess
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from dcr_mllm.cli import main
from dcr_mllm.world.models import MINI, ensure_world
from dcr_mllm.world.scenes import FINE_ATTRIBUTES, LABEL_COLUMNS, WORLD_VALUES, read_world, sample_scenes

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def mini_world(tmp_path_factory):
    """The world models trained for three steps each (same code as the real build)."""
    root = tmp_path_factory.mktemp("world")
    return {name: ensure_world(name, root, MINI) for name in ("clip", "sd")}


def test_make_eval_data_world_writes_images_and_labels(tmp_path, capsys):
    out = tmp_path / "world"
    assert main(["make-eval-data", "world", "--output", str(out), "--count", "12", "--seed", "3"]) == 0
    with open(out / "labels.csv", newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert (
        tuple(reader.fieldnames)
        == LABEL_COLUMNS
        == ("file", "shape", "color", "count", "position", "orientation", "size", "background")
    )
    assert len(rows) == 12
    for row in rows:
        assert Image.open(out / row["file"]).size == (32, 32)
        for name, values in WORLD_VALUES.items():
            assert (int(row[name]) if name == "count" else row[name]) in values
    assert [scene for _, scene in read_world(out)] == sample_scenes(12, 3)


def test_same_seed_same_images_other_seed_other_images(tmp_path, capsys):
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        assert (
            main(["make-eval-data", "world", "--output", str(tmp_path / name), "--count", "6", "--seed", str(seed)])
            == 0
        )
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    assert (tmp_path / "a" / "labels.csv").read_bytes() != (tmp_path / "c" / "labels.csv").read_bytes()


def test_a_training_seed_is_refused_for_evaluation(tmp_path, capsys):
    assert main(["make-eval-data", "world", "--output", str(tmp_path / "w"), "--seed", "10"]) == 2
    assert "training images" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


def test_world_build_is_deterministic_and_loads_like_real_checkpoints(mini_world, tmp_path):
    from transformers import CLIPModel

    from dcr_mllm.diffusion.denoiser import FrozenDenoiser

    again = ensure_world("clip", tmp_path, MINI)
    first, second = load_file(mini_world["clip"] / "model.safetensors"), load_file(again / "model.safetensors")
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    initial = CLIPModel(CLIPModel.from_pretrained(mini_world["clip"]).config).state_dict()
    assert any(
        not torch.equal(initial[k], first[k]) for k in first if "logit" not in k
    )  # trained, not just initialised
    denoiser = FrozenDenoiser.from_pretrained(mini_world["sd"])
    assert denoiser.cross_attention_dim == 64 and denoiser.vae.config.scaling_factor != 0.18215  # fitted to the latents


def test_world_metrics_and_condition_sensitivity(mini_world, tmp_path, capsys):
    from dcr_mllm.evaluation.analysis.condition import condition_sensitivity
    from dcr_mllm.evaluation.tower.world_metrics import evaluate_world
    from dcr_mllm.towers import load_tower

    assert main(["make-eval-data", "world", "--output", str(tmp_path / "eval"), "--count", "24"]) == 0
    scores = evaluate_world(load_tower(mini_world["clip"]), tmp_path / "eval", pairs_per_attribute=2)
    for kind in ("probe_global", "probe_layer"):
        assert {f"{kind}/{a}" for a in WORLD_VALUES} | {f"{kind}/fine_mean"} <= scores.keys()
    assert {"class/zero_shot", "class/probe", "pairs/mean", "pairs/orientation"} <= scores.keys()
    assert all(0 <= v <= 100 for v in scores.values())
    sensitivity = condition_sensitivity(mini_world["sd"], tmp_path / "eval", count=8)
    assert sensitivity["change/caption"] > 0 and all(math.isfinite(v) for v in sensitivity.values())


def test_summary_compares_each_seed_with_base():
    from dcr_mllm.enhance.ablation import summarize
    from dcr_mllm.enhance.ablation_report import report

    base = {
        "probe_global/fine_mean": 50.0,
        "probe_global/claim_mean": 40.0,
        "probe_layer/claim_mean": 45.0,
        "class/probe": 90.0,
        "class/zero_shot": 80.0,
        "pairs/mean": 10.0,
        "probe_layer/fine_mean": 60.0,
    }

    def shifted(d, **own):
        return {k: own.get(k.replace("/", "_"), v + d) for k, v in base.items()}

    results = summarize(
        base,
        {
            "reconstruction": [shifted(-4), shifted(-2)],
            "dcr": [shifted(6), shifted(1)],
            "dcr_tokens": [shifted(6, class_zero_shot=70.0), shifted(5)],
        },
    )
    fine = results["metrics"]["dcr"]["probe_global/fine_mean"]
    assert fine["mean"] == 53.5 and fine["minus_base"] == [6.0, 1.0] and fine["std"] == pytest.approx(3.5355, abs=1e-3)
    checks = results["checks"]
    assert (
        checks["dcr (global) above base on every seed by >= 5 points: probe_global/claim_mean"] is False
    )  # seed 1: +1
    assert checks["dcr_tokens above base on every seed by >= 5 points: probe_layer/claim_mean"] is True
    assert (
        checks["dcr class probe above reconstruction (mean)"] is True
        and checks["dcr class probe within 2 points of base (mean)"] is False
    )
    assert checks["dcr loses at most 5 points of class zero-shot on every seed"] is True
    assert checks["dcr_tokens loses at most 5 points of class zero-shot on every seed"] is False  # seed 0: -10
    # each objective against the one base tower over seeds: dcr +6 and +1 on claim_mean, t(1) = 3.5 / 2.5
    effect = results["effects"]["dcr - base: probe_global/claim_mean"]
    assert (
        effect["effect"] == 3.5
        and effect["ci"][0] < 0 < effect["ci"][1]
        and effect["p"] == pytest.approx(0.3949, abs=1e-3)
    )
    assert "dcr_tokens - naive: class/zero_shot" not in results["effects"]  # no naive in this ablation
    results["setup"] = {"seeds": 2}
    text = report(results)
    assert "| probe_global/fine_mean | 50.0 | 47.0 +- 1.4 | 53.5 +- 3.5 |" in text
    assert "| dcr - base | `probe_global/claim_mean` | +3.5 | [" in text


def test_the_budget_curve_chooses_each_budgets_steps_and_rate_on_validation_and_says_where_the_gain_starts():
    from dcr_mllm.enhance.budget import choose, gain_start
    from dcr_mllm.enhance.world_runs import EFFECT_METRICS, contrasts, effects, metric_table
    from dcr_mllm.errors import DcrError

    curves = {
        1e-3: [{0: 50, 20: 60, 40: 55, 80: 70}, {0: 50, 20: 58, 40: 58, 80: 52}],
        3e-4: [{0: 50, 20: 52, 40: 56, 80: 75}, {0: 50, 20: 51, 40: 60, 80: 74}],
    }
    # within 40 steps: 1e-3's best steps (20, and the earlier of a tie) average 59, 3e-4's 58
    assert choose(curves, 40) == {"lr": 1e-3, "steps": [20, 20], "validation": {"0.001": 59.0, "0.0003": 58.0}}
    assert choose(curves, 80)["lr"] == 3e-4 and choose(curves, 80)["steps"] == [80, 80]
    with pytest.raises(DcrError, match="no validated step within 10"):
        choose({1e-3: [{20: 1.0}]}, 10)

    def table(naive, dcr):
        runs = {
            "naive": [dict.fromkeys(EFFECT_METRICS, v) for v in naive],
            "dcr": [dict.fromkeys(EFFECT_METRICS, v) for v in dcr],
        }
        return metric_table(dict.fromkeys(EFFECT_METRICS, 60.0), runs)

    level = effects(table([61, 62, 63], [60, 62, 64]), contrasts(["naive", "dcr"]))  # DCR no better than naive
    ahead = effects(table([61, 62, 63], [70, 71, 73]), contrasts(["naive", "dcr"]))
    assert (
        level["dcr - base: probe_global/claim_mean"]["ci"][0]
        < 0
        < ahead["dcr - naive: probe_global/claim_mean"]["ci"][0]
    )
    assert ahead["dcr - base: probe_global/claim_mean"]["effect"] == pytest.approx(11.333, abs=1e-3)
    results = {
        "setup": {"objectives": ["naive", "dcr"], "multiples": [1, 4]},
        "budgets": {"1": {"effects": level}, "4": {"effects": ahead}},
    }
    assert gain_start(results) == [
        "- dcr on `probe_global/claim_mean`: above both base and naive (interval above 0) from 4x"
    ]
    results["budgets"] = {"1": {"effects": level}}
    assert gain_start(results)[0].endswith("above base and naive at no budget up to 4x")


def run_stage(script: str, *args, env: dict) -> str:
    """``bash stages/SCRIPT ARGS`` to completion (10 minutes at most); its stdout, its stderr's tail on failure."""
    run = subprocess.run(
        ["bash", str(REPO / "stages" / script), *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout


@pytest.mark.slow
@pytest.mark.timeout(1200)  # two pipelines, the ablation and the budget curve, on one miniature world
def test_miniature_ablation_writes_every_tower_and_the_report(tmp_path):
    env = {**os.environ, "DCR_MLLM_CACHE": str(tmp_path / "cache")}
    out = tmp_path / "ablation"
    steps = [
        "projector_stage.max_steps=1",
        "lora_stage.max_steps=1",
        "projector_stage.micro_batch_size=4",
        "lora_stage.micro_batch_size=4",
        "objective.num_negatives=2",
    ]  # the config's 4 negatives need a batch of 5
    # the controlled premise's world: every path the default's takes
    stdout = run_stage(
        "ablation.sh", "--output", out, "--seeds", "2", "--mini", "--one-background", "gray", *steps, env=env
    )
    assert stdout.strip().splitlines()[-1] == str(out)
    for objective in ("reconstruction", "naive", "dcr", "dcr_tokens"):
        for seed in (0, 1):
            assert (out / objective / f"seed{seed}" / "tower" / "model.safetensors").is_file()
    assert (out / "base" / "tower" / "config.json").is_file() and (out / "chart.png").stat().st_size > 0
    # the 17 towers scored by the 2 jobs, each process reading the evaluation set once
    assert sorted(log.name for log in (out / "scoring").iterdir()) == ["job0.log", "job1.log"]
    results = json.loads((out / "results.json").read_text())
    assert len(results["metrics"]["dcr"]["class/probe"]["seeds"]) == 2
    report_text = (out / "report.md").read_text()
    assert "| objective | metric | per seed |" in report_text
    assert report_text.index("## The premise") < report_text.index("## The objectives")  # the premise table first
    assert set(results["premise"]["attributes"]["position"]) >= {"hidden_global", "carried_tokens", "teachable_tokens"}
    # the one-background world end to end: its own models, its images all on gray, the default world untouched
    assert results["setup"]["world"]["one_background"] == "gray"
    assert (tmp_path / "cache" / "world-background-gray" / "sd").is_dir() and not (
        tmp_path / "cache" / "world"
    ).exists()
    for data in ("eval", "val"):
        assert {scene.background for _, scene in read_world(out / data)} == {"gray"}
    assert results["premise"]["probes"]["base"]["probe_layer/background"] == 100.0  # one value: nothing to tell apart
    # every run scored its tower on the ablation's validation set at step 0 and at its last step
    curve = results["curves"]["dcr"]["probe_global/fine_mean"]
    assert curve["steps"] == [0, 1] and len(curve["mean"]) == 2 and results["setup"]["validation"]["images"] == 24
    assert "## Validation curves during training" in report_text and (out / "curves.png").stat().st_size > 0
    base_curve = {
        objective: results["curves"][objective]["class/probe"]["mean"][0]
        for objective in ("reconstruction", "naive", "dcr", "dcr_tokens")
    }
    assert len(set(base_curve.values())) == 1  # step 0 is the same base tower for every objective
    # each run's step chosen on the validation split by one rule, beside its last step, both scored
    chosen = results["selected"]
    assert chosen["rule"] == "world/probe_layer/claim_mean" and chosen["last_step"] == 1
    assert all(set(steps) <= {0, 1} and len(steps) == 2 for steps in chosen["steps"].values())
    assert (
        set(chosen["metrics"]) == set(results["metrics"])
        and "## The last step and the step chosen on validation" in report_text
    )
    for objective in ("reconstruction", "dcr"):
        for seed in (0, 1):
            run_dir = out / objective / f"seed{seed}"
            assert (run_dir / "tower_last" / "model.safetensors").is_file() and (
                run_dir / "world_metrics_selected.json"
            ).is_file()
            step = chosen["steps"][objective][seed]
            assert f"Step {step} of the LoRA stage" in (run_dir / "tower" / "README.md").read_text()

    # the budget curve on the same world: one run per objective, rate and seed serves every budget (the
    # choice among rates: test_the_budget_curve_chooses_each_budgets_steps_and_rate_on_validation...)
    budget = tmp_path / "budget"
    run_stage(
        *("budget.sh", "--output", budget, "--mini", "--one-background", "gray", "--seeds", "1"),
        *("--multiples", "1,2", "--lrs", "1e-3", "--objectives", "dcr", *steps, "eval.every=1"),
        env=env,
    )
    curve = json.loads((budget / "results.json").read_text())
    assert curve["setup"]["lora_steps_1x"] == 1 and list(curve["budgets"]) == ["1", "2"]
    for multiple, row in curve["budgets"].items():
        choice = row["chosen"]["dcr"]
        assert choice["lr"] == 1e-3 and all(0 <= step <= int(multiple) for step in choice["steps"])
        assert "dcr - base: probe_global/claim_mean" in row["effects"]
    assert "## Where DCR's gain starts" in (budget / "report.md").read_text()
    # the constant rate makes the longer run pass through the shorter one: its step 1 is the ablation's last
    ablation_step = out / "dcr" / "seed0" / "lora" / "checkpoints" / "step_000001" / "trainable.safetensors"
    budget_step = (
        budget / "dcr" / "lr0.001" / "seed0" / "lora" / "checkpoints" / "step_000001" / "trainable.safetensors"
    )
    first, longer = load_file(ablation_step), load_file(budget_step)
    assert first.keys() == longer.keys() and all(torch.equal(first[k], longer[k]) for k in first)


def test_a_denoiser_field_keeps_the_clip_build_and_the_variants_build(tmp_path):
    """Fingerprints per model: a denoiser-only change rebuilds only the denoiser. The denoiser
    variants tried for the diagnosis (a third UNet level, high-noise timesteps, shift-form
    conditions) build in the miniature world and load as a StableDiffusionPipeline."""
    import dataclasses

    from diffusers import UNet2DConditionModel

    variant = dataclasses.replace(MINI, unet_channels=(16, 32, 32), high_noise_share=0.5, shift_share=0.3)
    assert variant.fingerprint("clip") == MINI.fingerprint("clip")
    assert variant.fingerprint("sd") != MINI.fingerprint("sd")
    assert dataclasses.replace(MINI, clip_steps=4).fingerprint("sd") == MINI.fingerprint("sd")
    sd = ensure_world("sd", tmp_path, variant)
    unet = UNet2DConditionModel.from_pretrained(sd, subfolder="unet")
    assert (
        unet.config.block_out_channels == [16, 32, 32]
        and unet.config.down_block_types[:2] == ["CrossAttnDownBlock2D"] * 2
    )


def test_a_one_background_world_is_its_own_variant_and_leaves_the_default_world_alone(tmp_path, monkeypatch):
    """The controlled premise's world: every scene on one background, the same scenes otherwise; its
    models fingerprinted and cached apart, while the default world's recipe (and shipped weights) stay."""
    import dataclasses

    from dcr_mllm.errors import DcrError
    from dcr_mllm.io import generated_from
    from dcr_mllm.world.models import WorldSpec, default_world_root
    from dcr_mllm.world.prepare import prepare_world
    from dcr_mllm.world.scenes import world_eval_set

    gray = WorldSpec(one_background="gray")
    assert "one_background" not in WorldSpec().recipe() and gray.recipe()["one_background"] == "gray"
    assert all(gray.fingerprint(name) != WorldSpec().fingerprint(name) for name in ("clip", "sd", "clip_reference"))
    monkeypatch.setenv("DCR_MLLM_CACHE", str(tmp_path / "cache"))
    assert default_world_root(gray) == tmp_path / "cache" / "world-background-gray"
    assert default_world_root(WorldSpec()) == default_world_root() == tmp_path / "cache" / "world"
    with pytest.raises(DcrError, match="one_background 'pink'"):
        WorldSpec(one_background="pink")

    scenes = sample_scenes(40, 3, "gray")
    assert {scene.background for scene in scenes} == {"gray"}
    assert [dataclasses.replace(scene, background="gray") for scene in sample_scenes(40, 3)] == scenes
    default = world_eval_set(tmp_path / "val", 3, 12)
    assert "background" not in generated_from(default)  # the default sets' recipes are unchanged
    one = world_eval_set(tmp_path / "val", 3, 12, background="gray")  # another recipe: regenerated
    assert generated_from(one)["background"] == "gray" and {s.background for _, s in read_world(one)} == {"gray"}
    with pytest.raises(DcrError, match="no LLaVA conversations"):
        prepare_world(tmp_path / "out", gray, tmp_path / "models")
    assert not (tmp_path / "models").exists()  # refused before building anything


def test_generated_sets_are_reused_only_when_made_from_the_same_settings(tmp_path):
    """A changed count, seed or size regenerates a data folder (atomically); the same ones reuse it."""
    from dcr_mllm.io import generated_from
    from dcr_mllm.llava.train.synthetic import write_synthetic_conversations
    from dcr_mllm.world.conversations import write_world_conversations
    from dcr_mllm.world.scenes import world_eval_set, write_world_shards

    shards = write_world_shards(tmp_path / "shards", 8, seed=14, samples_per_shard=4)
    first = {p.name: p.stat().st_mtime_ns for p in shards.iterdir()}
    assert generated_from(shards) == {
        "generator": "world-shards",
        "version": 1,
        "count": 8,
        "seed": 14,
        "size": 32,
        "samples_per_shard": 4,
    }
    write_world_shards(tmp_path / "shards", 8, seed=14, samples_per_shard=4)
    assert {p.name: p.stat().st_mtime_ns for p in shards.iterdir()} == first  # reused, not rewritten
    write_world_shards(tmp_path / "shards", 12, seed=14, samples_per_shard=4)
    assert sorted(p.name for p in shards.glob("*.tar")) == ["00000.tar", "00001.tar", "00002.tar"]
    assert (
        generated_from(shards)["count"] == 12 and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    )

    conversations = write_world_conversations(tmp_path / "llava", 4, seed=13)
    write_world_conversations(tmp_path / "llava", 6, seed=13, size=24)
    assert len(list((conversations / "images").iterdir())) == 6 and generated_from(conversations)["size"] == 24

    labelled = world_eval_set(tmp_path / "eval", seed=1, count=5)
    world_eval_set(tmp_path / "eval", seed=3, count=5)
    assert generated_from(labelled)["seed"] == 3 and len((labelled / "labels.csv").read_text().splitlines()) == 6

    paths = write_synthetic_conversations(tmp_path / "synthetic", num_images=8)
    write_synthetic_conversations(tmp_path / "synthetic", num_images=16)
    assert len(json.loads(paths["pretrain"].read_text())) == 16


def test_long_world_work_prints_progress(tmp_path, capsys, monkeypatch):
    """Side-by-side model builds print lines (start, at least every interval, end); data sets a bar."""
    from dcr_mllm.progress import ProgressLines
    from dcr_mllm.world.scenes import write_world_shards

    lines = ProgressLines("world-clip", 3, every=0.0)
    lines.update(1, loss=2.5)
    lines.update(3, loss=1.25)
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "world-clip: started, 3 steps"
    assert (
        err[1].startswith("world-clip: step 1/3 (")
        and err[1].endswith(", loss 2.5)")
        and err[2].startswith("world-clip: step 3/3")
    )
    quiet = ProgressLines("x", 10, every=3600.0)
    quiet.update(5)
    quiet.update(10)  # the last step always prints
    assert [line.split(" (")[0] for line in capsys.readouterr().err.splitlines()] == [
        "x: started, 10 steps",
        "x: step 10/10",
    ]
    write_world_shards(tmp_path / "shards", 4, seed=14)
    assert "world shards (4 images)" in capsys.readouterr().err


def test_premise_table_says_where_dcr_can_teach(mini_world, tmp_path):
    """The premise in the miniature world: probes of the base and the reference CLIP, the
    denoiser's sensitivity in both forms, and the verdicts follow the stated thresholds."""
    from dcr_mllm.evaluation.analysis.premise import CARRIED_SHARE, HIDDEN_POINTS, measure_premise, premise_table

    models = mini_world["clip"].parent  # the miniature world's models; only the reference is built here
    result = measure_premise(tmp_path / "world", MINI, models, count=12, val_count=24)
    assert set(result["attributes"]) == set(FINE_ATTRIBUTES)
    assert (models / "clip_reference" / "config.json").is_file()
    assert "| position |" in (tmp_path / "world" / "premise.md").read_text()
    saved = json.loads((tmp_path / "world" / "premise.json").read_text())
    assert saved["probes"]["base"] != saved["probes"]["reference"]  # another training caption set, another tower
    for row in result["attributes"].values():
        assert row["teachable_global"] == (
            row["hidden_global"] >= HIDDEN_POINTS and row["carried_global"] >= CARRIED_SHARE
        )
    probes = {
        name: {
            f"{kind}/{a}": 50.0 + (30.0 if name == "reference" and a == "position" else 0.0)
            for kind in ("probe_global", "probe_layer")
            for a in FINE_ATTRIBUTES
        }
        for name in ("base", "reference")
    }
    sensitivity = {
        "mse/empty": 0.4,
        "mse/caption": 0.2,
        **{f"{key}/{a}": 0.0 for key in ("shift_gain", "mse_gain") for a in FINE_ATTRIBUTES},
    }
    sensitivity["mse_gain/position"] = 0.05  # a quarter of the caption's gain, in the token form only
    rows = premise_table(probes, sensitivity)["attributes"]
    assert rows["position"]["teachable_tokens"] and not rows["position"]["teachable_global"]
    assert not any(rows[a]["teachable_tokens"] for a in FINE_ATTRIBUTES if a != "position")


def test_world_premise_refuses_too_few_images_in_one_line(tmp_path, capsys):
    assert main(["world", "premise", "--output", str(tmp_path / "w"), "--count", "5"]) == 2
    err = capsys.readouterr().err
    assert "--count 5: the premise needs at least 12 validation images" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "w").exists()
