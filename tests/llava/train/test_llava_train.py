"""Stage two end to end on the tiny preset: pretrain, finetune, export, reload, generate."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import (
    AutoImageProcessor,
    AutoModelForCausalLM,
    AutoProcessor,
    CLIPVisionModel,
    LlavaForConditionalGeneration,
)

from dcr_mllm.config import load_config
from dcr_mllm.errors import ConfigError
from dcr_mllm.llava.build import build_llava
from dcr_mllm.llava.train.data import ConversationData
from dcr_mllm.llava.train.recipe import LlavaTrainConfig, build_for_stage, run_llava, validate

REPO = Path(__file__).resolve().parents[3]


def tiny_config(tiny, out, **overrides):
    base = [
        f"tower={tiny['clip']}",
        "language_model=tiny-llama",
        f"output_dir={out}",
        "synthetic_images=16",
        "pretrain.micro_batch_size=4",
        "finetune.micro_batch_size=4",
        "pretrain.lr=0.01",
        "finetune.lr=0.001",
        "pretrain.num_workers=0",
        "finetune.num_workers=0",
        "finetune.zero_stage=2",
    ]
    return load_config(LlavaTrainConfig, None, base + [f"{k}={v}" for k, v in overrides.items()])


def after_pretrain(trained, run_dir: Path) -> Path:
    """A fresh output directory that shares the trained run's pretrain stage and data."""
    _, out, _ = trained
    run_dir.mkdir()
    os.symlink(out / "pretrain", run_dir / "pretrain")
    os.symlink(out / "data", run_dir / "data")
    return run_dir


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("llava")
    cfg = tiny_config(tiny, out)
    run_llava(cfg, "pretrain")
    model_dir = run_llava(tiny_config(tiny, out), "finetune")
    return cfg, out, model_dir


def test_pretrain_trains_only_the_projector(tiny, trained):
    cfg, out, _ = trained
    state = load_file(out / "pretrain" / "trainable.safetensors")
    assert state and all(k.startswith("model.multi_modal_projector.") for k in state)
    torch.manual_seed(cfg.seed)
    initial, _ = build_llava(tiny["clip"], tiny["llama"])  # the projector as it started
    start = dict(initial.named_parameters())
    assert all(not torch.equal(state[k], start[k]) for k in state), "every projector tensor changed"
    assert json.loads((out / "pretrain" / "train_state.json").read_text())["step"] == 4  # 16 images / 4, one epoch


def test_finetune_exports_a_llava_hf_model_that_generates(tiny, trained):
    _, _out, model_dir = trained
    model = LlavaForConditionalGeneration.from_pretrained(model_dir)
    processor = AutoProcessor.from_pretrained(model_dir)
    assert (model_dir / "model_card.md").is_file() and (model_dir / "chat_template.jinja").is_file()

    tower = CLIPVisionModel.from_pretrained(tiny["clip"]).state_dict()
    for key, value in model.model.vision_tower.state_dict().items():
        assert torch.equal(value, tower[key]), f"the frozen tower changed at {key}"

    base_lm = AutoModelForCausalLM.from_pretrained(tiny["llama"]).model.layers.state_dict()
    exported = model.model.language_model.layers.state_dict()
    assert all(not torch.equal(exported[k], base_lm[k]) for k in exported if k.endswith("proj.weight")), (
        "finetuning changes the LM"
    )

    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour are the shapes?"}]}
    ]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=Image.new("RGB", (48, 48), (255, 0, 0)), text=prompt, return_tensors="pt")
    generated = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert generated.shape[1] > inputs["input_ids"].shape[1]


def test_exported_model_prompts_and_sees_pixels_as_in_training(tiny, trained, tmp_path):
    """Its chat template renders LLaVA-1.5's vicuna_v1 prompt, and AutoProcessor gives a wide image the
    pixels of expand2square + the tower's preprocessing: what the finetune stage trained on."""
    _, out, model_dir = trained
    processor = AutoProcessor.from_pretrained(model_dir)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour?"}]}]
    assert processor.apply_chat_template(messages, add_generation_prompt=True) == (
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the user's questions. USER: <image>\nWhat colour? ASSISTANT:"
    )

    wide = Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 80, 3), dtype=np.uint8))
    tower = AutoImageProcessor.from_pretrained(tiny["clip"])
    side = max(wide.size)
    square = Image.new("RGB", (side, side), tuple(int(m * 255) for m in tower.image_mean))  # LLaVA's expand2square
    square.paste(wide, (0, (side - wide.size[1]) // 2))
    expected = tower(square, return_tensors="pt").pixel_values[0]
    exported = processor.image_processor(wide, return_tensors="pt").pixel_values[0]
    assert (exported - expected).abs().max() < 1e-6

    cfg = tiny_config(tiny, out)
    _, training_processor = build_llava(tiny["clip"], tiny["llama"])
    text = [{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}]}]
    finetune = ConversationData(
        text, tmp_path, training_processor, "vicuna_v1", 16, 64, cfg.finetune_data.image_aspect_ratio
    )
    assert (finetune.pixels(wide) - expected).abs().max() < 1e-6
    pretrain = ConversationData(
        text, tmp_path, training_processor, "plain", 16, 64, cfg.pretrain_data.image_aspect_ratio
    )
    assert (pretrain.pixels(wide) - tower(wide, return_tensors="pt").pixel_values[0]).abs().max() < 1e-6


def test_export_keeps_the_finetune_aspect(tiny, trained, tmp_path):
    from dcr_mllm.llava.train.export import export_llava

    run_dir = after_pretrain(trained, tmp_path / "square")
    os.symlink(trained[1] / "finetune", run_dir / "finetune")
    model_dir = export_llava(
        tiny_config(tiny, run_dir, **{"finetune_data.image_aspect_ratio": "square"}), run_dir / "model"
    )
    wide = Image.fromarray(np.random.default_rng(1).integers(0, 256, (30, 80, 3), dtype=np.uint8))
    exported = AutoProcessor.from_pretrained(model_dir).image_processor(wide, return_tensors="pt").pixel_values
    tower = AutoImageProcessor.from_pretrained(tiny["clip"])
    assert (exported - tower(wide, return_tensors="pt").pixel_values).abs().max() < 1e-6


def test_stage_defaults_are_llava_1_5s(tiny, tmp_path):
    cfg = tiny_config(tiny, tmp_path)
    assert (cfg.pretrain_data.image_aspect_ratio, cfg.pretrain_data.group_by_length) == ("square", False)
    assert (cfg.finetune_data.image_aspect_ratio, cfg.finetune_data.group_by_length) == ("pad", True)
    assert cfg.pretrain.gradient_checkpointing and cfg.finetune.gradient_checkpointing
    model, _ = build_for_stage(cfg, "pretrain")
    assert all(layer.gradient_checkpointing for layer in model.model.language_model.layers)
    model, _ = build_for_stage(tiny_config(tiny, tmp_path, **{"pretrain.gradient_checkpointing": "false"}), "pretrain")
    assert not any(layer.gradient_checkpointing for layer in model.model.language_model.layers)
    with pytest.raises(ConfigError, match="finetune_data.image_aspect_ratio must be one of square, pad"):
        validate(tiny_config(tiny, tmp_path, **{"finetune_data.image_aspect_ratio": "anyres"}), "pretrain")


def test_rerun_of_a_finished_stage_does_nothing(tiny, trained, capsys):
    _, out, model_dir = trained
    assert run_llava(tiny_config(tiny, out), "finetune") == model_dir
    assert "nothing to do" in capsys.readouterr().out


def test_finetune_needs_a_finished_pretrain(tiny, tmp_path, capsys):
    from dcr_mllm.cli import main

    assert (
        main(["llava-finetune", f"tower={tiny['clip']}", "language_model=tiny-llama", f"output_dir={tmp_path / 'x'}"])
        == 2
    )
    assert "run llava-pretrain first" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.distributed
def test_two_process_zero3_finetune(tiny, trained, tmp_path):
    run_dir = after_pretrain(trained, tmp_path / "zero3")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "dcr_mllm.cli",
        "llava-finetune",
        f"tower={tiny['clip']}",
        "language_model=tiny-llama",
        f"output_dir={run_dir}",
        "synthetic_images=16",
        "finetune.micro_batch_size=2",
        "finetune.max_steps=2",
        "finetune.epochs=0",
        "finetune.zero_stage=3",
        "finetune.num_workers=0",
    ]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    state = json.loads((run_dir / "finetune" / "train_state.json").read_text())
    assert state["world_size"] == 2 and state["step"] == 2
    LlavaForConditionalGeneration.from_pretrained(run_dir / "model")


def test_lora_finetune_trains_adapters_and_projector_then_merges(tiny, trained, tmp_path):
    _, out, _ = trained
    run_dir = after_pretrain(trained, tmp_path / "lora")
    cfg = tiny_config(
        tiny,
        run_dir,
        **{
            "lora.enabled": "true",
            "lora.r": 4,
            "lora.alpha": 8,
            "lora.projector_lr": 0.0,
            "finetune.epochs": 0,
            "finetune.max_steps": 2,
        },
    )
    model_dir = run_llava(cfg, "finetune")
    state = load_file(run_dir / "finetune" / "trainable.safetensors")
    assert any("lora_A" in k for k in state) and any("multi_modal_projector" in k for k in state)
    assert all("lora_" in k or "multi_modal_projector" in k for k in state)
    pretrained = load_file(out / "pretrain" / "trainable.safetensors")
    for key, value in pretrained.items():  # projector lr 0: its own learning rate group is honoured
        assert torch.equal(state[key], value)
    model = LlavaForConditionalGeneration.from_pretrained(model_dir)
    assert not any("lora_" in name for name, _ in model.named_parameters()), "adapters are merged on export"
    base = AutoModelForCausalLM.from_pretrained(tiny["llama"]).model.layers.state_dict()
    merged = model.model.language_model.layers.state_dict()
    assert any(not torch.equal(merged[k], base[k]) for k in merged if k.endswith("q_proj.weight"))


def _metric_steps(stage_dir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (stage_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_positive_max_steps_wins_over_epochs_and_raising_it_continues(tiny, trained, tmp_path, capsys):
    """The CLI help's example on the shipped tiny config (epochs: 12): HF Trainer's rule, max_steps wins."""
    from dcr_mllm.cli import main

    run_dir = after_pretrain(trained, tmp_path / "steps")
    common = [
        "--config",
        str(REPO / "dcr_mllm/configs/llava_tiny.yaml"),
        f"tower={tiny['clip']}",
        f"output_dir={run_dir}",
        "synthetic_images=16",
        "finetune.micro_batch_size=4",
    ]
    assert main(["llava-finetune", *common, "finetune.max_steps=3"]) == 0
    assert _metric_steps(run_dir / "finetune") == [1, 2, 3]
    assert (
        main(["llava-finetune", *common, "finetune.max_steps=5", "--allow-config-change"]) == 0
    )  # cosine: the schedule changes shape
    assert _metric_steps(run_dir / "finetune") == [1, 2, 3, 4, 5]


def test_raising_epochs_on_a_finished_stage_continues_it(tiny, tmp_path, capsys):
    out = tmp_path / "epochs"
    run_llava(tiny_config(tiny, out), "pretrain")  # one epoch: 16 images / 4
    assert _metric_steps(out / "pretrain") == [1, 2, 3, 4]
    run_llava(tiny_config(tiny, out), "pretrain")
    assert "nothing to do" in capsys.readouterr().out
    run_llava(tiny_config(tiny, out, **{"pretrain.epochs": 2}), "pretrain", allow_config_change=True)
    assert _metric_steps(out / "pretrain") == list(range(1, 9))


def test_held_out_loss_is_logged_and_leaves_training_as_it_was(tiny, trained, tmp_path):
    """A held-out share is never trained on; its loss is logged every eval_every steps (and drawn in
    loss.png); how often it is taken does not change the trained weights."""
    from dcr_mllm.evaluation.analysis.summary import plot_loss

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # bitwise comparison: one thread
    try:
        runs = {}
        for every in (2, 4):
            run_dir = after_pretrain(trained, tmp_path / f"every{every}")
            cfg = tiny_config(
                tiny,
                run_dir,
                **{
                    "finetune.epochs": 0,
                    "finetune.max_steps": 4,
                    "finetune_data.eval_share": 0.25,
                    "finetune_data.eval_every": every,
                },
            )
            run_llava(cfg, "finetune")
            runs[every] = run_dir
    finally:
        torch.set_num_threads(threads)
    rows = [json.loads(line) for line in (runs[2] / "finetune" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows if "eval/loss" in row] == [2, 4]
    assert all(np.isfinite(row["eval/loss"]) and row["eval/loss"] > 0 for row in rows if "eval/loss" in row)
    assert [
        row["step"]
        for row in (json.loads(line) for line in (runs[4] / "finetune" / "metrics.jsonl").read_text().splitlines())
        if "eval/loss" in row
    ] == [4]
    a, b = (
        load_file(runs[2] / "finetune" / "trainable.safetensors"),
        load_file(runs[4] / "finetune" / "trainable.safetensors"),
    )
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert plot_loss(runs[2] / "finetune").stat().st_size > 0
    with pytest.raises(ConfigError, match="eval_share and finetune_data.eval_every work together"):
        validate(tiny_config(tiny, tmp_path, **{"finetune_data.eval_share": 0.1}), "pretrain")


def test_held_out_records_are_a_seeded_share_never_trained_on():
    from dcr_mllm.llava.train.recipe import held_out_split

    records = [{"id": str(i)} for i in range(40)]
    train, held = held_out_split(records, 0.1, seed=0)
    assert len(held) == 4 and len(train) == 36 and not {r["id"] for r in train} & {r["id"] for r in held}
    assert held_out_split(records, 0.1, seed=0) == (train, held) and held_out_split(records, 0.1, seed=1)[1] != held
    assert held_out_split(records, 0.0, seed=0) == (records, [])


def test_the_loss_on_labelled_positions_only_equals_transformers_full_loss(tiny, trained):
    """``llava_loss`` applies the LM head only where a label follows; its value and gradients are
    those of transformers' own loss (``labels=``, logits at every position)."""
    from dcr_mllm.llava.train.batches import GroupedBatches
    from dcr_mllm.llava.train.recipe import conversation_data, llava_loss, read_records

    cfg, out, _ = trained
    torch.manual_seed(0)
    model, processor = build_for_stage(cfg, "finetune")
    data = conversation_data(
        cfg, "finetune", processor, read_records(out / "data" / "finetune.json"), out / "data" / "images"
    )
    batch = next(iter(GroupedBatches(data, 4, pad_token_id=processor.tokenizer.pad_token_id)))
    assert (batch["labels"] == -100).float().mean() > 0.3 and (
        batch["attention_mask"] == 0
    ).any()  # a padded batch with prompts
    batch["labels"][1, :] = -100  # a row with nothing to learn (a corrupt image) too

    def grads(loss):
        model.zero_grad()
        loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    ours = llava_loss(model, batch, "cpu", torch.float32)
    ours_grads = grads(ours)
    full = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        labels=batch["labels"],
        pixel_values=batch["pixel_values"],
    ).loss
    full_grads = grads(full)
    torch.testing.assert_close(ours, full, rtol=1e-6, atol=1e-6)
    assert ours_grads.keys() == full_grads.keys() and len(ours_grads) > 10
    for name in ours_grads:
        torch.testing.assert_close(ours_grads[name], full_grads[name], rtol=1e-5, atol=1e-7, msg=name)


def other_tower(tiny, path: Path) -> Path:
    """A copy of the tiny CLIP tower with other weights: the same shape, another tower."""
    import shutil

    from safetensors.torch import save_file

    shutil.copytree(tiny["clip"], path)
    weights = next(path.glob("*.safetensors"))
    state = load_file(weights)
    save_file({k: v + 0.01 if v.is_floating_point() else v for k, v in state.items()}, weights)
    return path


def test_a_stage_made_from_another_tower_is_refused_and_overwrite_trains_it_again(tiny, trained, tmp_path, capsys):
    from dcr_mllm.cli import main

    _, out, _ = trained
    run_dir = after_pretrain(trained, tmp_path / "ab")  # pretrained with tower A
    tower_b = other_tower(tiny, tmp_path / "tower_b")
    args = [f"tower={tower_b}", "language_model=tiny-llama", f"output_dir={run_dir}", "synthetic_images=16"]
    args += ["pretrain.micro_batch_size=4", "pretrain.lr=0.01", "pretrain.num_workers=0"]
    before = {p: p.stat().st_mtime_ns for p in (out / "pretrain").rglob("*")}
    assert main(["llava-pretrain", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pretrain was made from another tower (tower: " in err and "--overwrite" in err
    assert {p: p.stat().st_mtime_ns for p in (out / "pretrain").rglob("*")} == before  # untouched
    assert main(["llava-finetune", *args]) == 2  # finetune builds on that pretrain stage: refused too
    assert "run llava-pretrain --overwrite" in capsys.readouterr().err and not (run_dir / "finetune").exists()
    assert main(["llava-pretrain", *args, "pretrain.max_steps=1", "--overwrite"]) == 0
    assert json.loads((run_dir / "pretrain" / "train_state.json").read_text())["step"] == 1  # trained again, with B
    assert (
        not (run_dir / "pretrain").is_symlink()
        and json.loads((out / "pretrain" / "train_state.json").read_text())["step"] == 4
    )
    assert main(["llava-pretrain", *args, "pretrain.max_steps=1"]) == 0
    assert "nothing to do" in capsys.readouterr().out
