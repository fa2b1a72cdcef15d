"""bf16 end to end through the CLI on the tiny preset: every recipe runs in DeepSpeed's bf16 mode,
its losses stay close to an fp32 run's, and what it saves are the fp32 master weights."""

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from deepspeed.utils import safe_get_full_fp32_param
from safetensors.torch import load_file

from dcr_mllm.cli import main
from dcr_mllm.config import load_config
from dcr_mllm.enhance.config import EnhanceConfig, validate
from dcr_mllm.enhance.recipe import build_model
from dcr_mllm.objectives.dcr import dcr_loss
from dcr_mllm.training import Trainer, init_distributed

STEPS = ["max_steps=2", "micro_batch_size=4", "num_workers=0", "lr=1e-3", "save_every=1", "keep_last=2"]


def run(*args: str) -> None:
    assert main(list(args)) == 0, f"dcr-mllm {' '.join(args)} failed"


def losses(stage_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (stage_dir / "metrics.jsonl").read_text().splitlines()]


def assert_fp32_masters(path: Path) -> None:
    """Saved weights are float32 and mostly not representable in bf16: not the module's bf16 copies."""
    state = load_file(path)
    assert state and all(v.dtype == torch.float32 for v in state.values()), f"{path}: not float32"
    values = torch.cat([v.flatten() for v in state.values()])
    off_grid = (values != values.bfloat16().float()).float().mean().item()
    assert off_grid > 0.5, f"{path}: {off_grid:.0%} of the values are off the bf16 grid; bf16-rounded copies were saved"


@pytest.fixture(scope="module")
def enhance_runs(tiny, tmp_path_factory):
    """The enhance recipe (both stages, then export) from one seed, in fp32 and in bf16."""
    root = tmp_path_factory.mktemp("enhance_bf16")
    for precision in ("fp32", "bf16"):
        run(
            "enhance",
            f"output_dir={root / precision}",
            "data.synthetic_samples=32",
            "data.synthetic_shards=4",
            *(
                f"{stage}.{setting}"
                for stage in ("projector_stage", "lora_stage")
                for setting in [*STEPS, f"precision={precision}"]
            ),
        )
    return root


@pytest.fixture(scope="module")
def llava_bf16(tiny, tmp_path_factory):
    """llava-pretrain, llava-finetune (full, ZeRO-3) and llava-finetune with LoRA, all in bf16."""
    root = tmp_path_factory.mktemp("llava_bf16")
    common = [f"tower={tiny['clip']}", "language_model=tiny-llama", "synthetic_images=8"]
    run(
        "llava-pretrain",
        *common,
        f"output_dir={root / 'full'}",
        "pretrain.epochs=0",
        "pretrain.precision=bf16",
        *(f"pretrain.{s}" for s in STEPS),
    )
    (root / "lora").mkdir()
    for part in ("pretrain", "data"):  # the LoRA run shares the pretrain stage
        os.symlink(root / "full" / part, root / "lora" / part)
    finetune = ["finetune.epochs=0", "finetune.precision=bf16", *(f"finetune.{s}" for s in STEPS)]
    run("llava-finetune", *common, f"output_dir={root / 'full'}", *finetune)
    run(
        "llava-finetune",
        *common,
        f"output_dir={root / 'lora'}",
        *finetune,
        "lora.enabled=true",
        "lora.r=4",
        "lora.alpha=8",
        "finetune.zero_stage=2",
    )
    return root


def test_enhance_in_bf16_stays_close_to_fp32(enhance_runs):
    for precision in ("fp32", "bf16"):
        assert (enhance_runs / precision / "tower" / "README.md").is_file()
    for stage in ("projector", "lora"):
        fp32, bf16 = losses(enhance_runs / "fp32" / stage), losses(enhance_runs / "bf16" / stage)
        assert len(fp32) == len(bf16) == 2
        assert fp32 != bf16, "bf16 must actually run in bf16"
        assert bf16 == pytest.approx(fp32, rel=1e-2), f"{stage}: bf16 losses {bf16} drift from fp32 {fp32}"


def test_bf16_runs_save_fp32_masters(enhance_runs, llava_bf16):
    for stage in ("projector", "lora"):
        assert_fp32_masters(enhance_runs / "bf16" / stage / "trainable.safetensors")
    for run_dir, stage in (("full", "pretrain"), ("full", "finetune"), ("lora", "finetune")):
        assert json.loads((llava_bf16 / run_dir / stage / "train_state.json").read_text())["step"] == 2
        assert_fp32_masters(llava_bf16 / run_dir / stage / "trainable.safetensors")
    for run_dir in ("full", "lora"):
        assert (llava_bf16 / run_dir / "model" / "model_card.md").is_file()


def test_bf16_run_resumes_to_the_same_weights(enhance_runs):
    """Rewind the bf16 projector stage to its step-1 checkpoint and run it again: the bf16
    optimizer state and the data position come back, so step 2 lands on the same weights."""
    stage = enhance_runs / "bf16" / "projector"
    finished = load_file(stage / "trainable.safetensors")
    rewound = enhance_runs / "rewound"
    rewound.mkdir()
    shutil.copytree(stage / "checkpoints", rewound / "projector" / "checkpoints")
    (rewound / "projector" / "checkpoints" / "latest").write_text("step_000001")
    shutil.copy(stage / "made_from.json", rewound / "projector")  # what the stage was made from goes with it
    os.symlink(enhance_runs / "bf16" / "data", rewound / "data")
    run(
        "enhance",
        "--stage",
        "projector",
        f"output_dir={rewound}",
        "data.synthetic_samples=32",
        "data.synthetic_shards=4",
        *(f"projector_stage.{s}" for s in [*STEPS, "precision=bf16"]),
    )
    resumed = load_file(rewound / "projector" / "trainable.safetensors")
    assert resumed.keys() == finished.keys()
    for name in finished:
        assert torch.equal(resumed[name], finished[name]), f"{name} differs after resuming"


def test_dcr_loss_is_computed_in_fp32_from_bf16_predictions():
    torch.manual_seed(0)
    pairwise, positive, target = torch.randn(3, 3, 4, 8, 8), torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    half = [t.bfloat16() for t in (pairwise, positive, target)]
    loss = dcr_loss(*half)
    assert loss.dtype == torch.float32
    assert torch.equal(loss, dcr_loss(*(t.float() for t in half))), "bf16 inputs are upcast before any arithmetic"


def test_bf16_engine_runs_frozen_models_in_bf16_and_the_loss_in_fp32(tiny, tmp_path):
    cfg = load_config(
        EnhanceConfig,
        None,
        [
            "tower=tiny-clip",
            "denoiser=tiny-sd",
            f"output_dir={tmp_path}",
            "projector_stage.precision=bf16",
            "projector_stage.zero_stage=2",
        ],
    )
    trainer = Trainer(
        build_model(cfg, validate(cfg), "projector"),
        cfg.projector_stage,
        tmp_path / "projector",
        cfg.seed,
        init_distributed(),
    )
    module = trainer.engine.module
    for part in (module.tower, module.denoiser.unet, module.denoiser.vae, module.projector):
        assert {p.dtype for p in part.parameters()} == {torch.bfloat16}
    size = module.tower.spec.image_size
    loss, _ = trainer.engine(torch.rand(2, 3, size, size), torch.Generator().manual_seed(0))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    trainer.engine.backward(loss)
    trainer.engine.step()
    for param in module.projector.parameters():
        master = safe_get_full_fp32_param(param)
        assert master.dtype == torch.float32 and not torch.equal(master, master.bfloat16().float())
