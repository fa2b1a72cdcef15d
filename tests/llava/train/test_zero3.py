"""ZeRO-3 without a whole model anywhere: LLaVA built partitioned, and the export streamed."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import LlavaForConditionalGeneration

from dcr_mllm.config import load_config
from dcr_mllm.llava.build import add_language_lora, build_llava
from dcr_mllm.llava.train.export import export_llava
from dcr_mllm.llava.train.recipe import LlavaTrainConfig, run_llava
from dcr_mllm.presets.real import local_path
from dcr_mllm.towers.lora import merge_adapters
from dcr_mllm.training import load_trainable_state

REPO = Path(__file__).resolve().parents[3]
#: ZeRO-3 with every parameter partitioned, however small (tiny models are below DeepSpeed's default threshold)
ZERO3 = {"zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0}}


def tiny_config(tiny, out, **overrides):
    base = [
        f"tower={tiny['clip']}",
        "language_model=tiny-llama",
        f"output_dir={out}",
        "synthetic_images=8",
        "pretrain.micro_batch_size=4",
        "finetune.micro_batch_size=4",
        "pretrain.lr=0.01",
        "finetune.lr=0.01",
        "pretrain.num_workers=0",
        "finetune.num_workers=0",
        "finetune.zero_stage=2",
    ]
    return load_config(LlavaTrainConfig, None, base + [f"{k}={v}" for k, v in overrides.items()])


def _read_dir(directory: Path) -> dict[str, torch.Tensor]:
    return {k: v for file in sorted(directory.glob("*.safetensors")) for k, v in load_file(file).items()}


def _export_by_building(cfg, out: Path, max_shard_size) -> None:
    """What the export did before streaming: build the model, load, merge, ``save_pretrained``."""
    torch.manual_seed(cfg.seed)
    model, _ = build_llava(cfg.tower, local_path(cfg.language_model), cfg.feature_layer)
    output_dir = Path(cfg.output_dir)
    load_trainable_state(model, output_dir / "pretrain" / "trainable.safetensors")
    if cfg.lora.enabled:
        add_language_lora(model, cfg.lora)
    load_trainable_state(model, output_dir / "finetune" / "trainable.safetensors")
    if cfg.lora.enabled:
        merge_adapters(model.model.language_model)
    model.save_pretrained(out, max_shard_size=max_shard_size)


@pytest.mark.parametrize("lora", [False, True])
def test_streamed_export_equals_building_the_model(tiny, tmp_path, lora):
    overrides = {"pretrain.epochs": 0, "pretrain.max_steps": 1, "finetune.epochs": 0, "finetune.max_steps": 1}
    if lora:
        overrides |= {"lora.enabled": "true", "lora.r": 4, "lora.alpha": 8}
    cfg = tiny_config(tiny, tmp_path / "run", **overrides)
    run_llava(cfg, "pretrain")
    run_llava(tiny_config(tiny, tmp_path / "run", **overrides), "finetune")
    shard = 40_000  # bytes: the tiny model is about 10 of these, so nothing holds all of it at once
    export_llava(cfg, tmp_path / "streamed", max_shard_size=shard)
    _export_by_building(cfg, tmp_path / "built", shard)

    streamed, built = tmp_path / "streamed", tmp_path / "built"
    index = json.loads((streamed / "model.safetensors.index.json").read_text())
    assert index == json.loads((built / "model.safetensors.index.json").read_text()), "same keys, same shards"
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 3 and max((streamed / s).stat().st_size for s in shards) < index["metadata"]["total_size"] / 3
    ours, theirs = _read_dir(streamed), _read_dir(built)
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():
        assert ours[key].dtype == value.dtype and torch.equal(ours[key], value), key
    for name in ("config.json", "generation_config.json"):
        assert json.loads((streamed / name).read_text()) == json.loads((built / name).read_text()), name
    if lora:  # the merge really changed the LM: W + scale * B @ A, not W
        base = load_file(local_path("tiny-llama") / "model.safetensors")
        assert not torch.equal(
            ours["language_model.model.layers.0.self_attn.q_proj.weight"],
            base["model.layers.0.self_attn.q_proj.weight"],
        )
    model = LlavaForConditionalGeneration.from_pretrained(streamed)
    assert not any("lora_" in name for name, _ in model.named_parameters())


BUILD_CHECK = """
import json, sys
import torch
import torch.distributed as dist
from torch.utils._python_dispatch import TorchDispatchMode
from dcr_mllm.llava.build import build_llava
from dcr_mllm.training import TrainConfig, init_distributed, zero3_config

class LargestTensor(TorchDispatchMode):
    largest = 0
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out

tower, llama, sd, ds_json, out = sys.argv[1:6]
info = init_distributed()
ds_config = zero3_config(TrainConfig(zero_stage=3, deepspeed=ds_json, precision="bf16", micro_batch_size=1))
torch.manual_seed(0)
with LargestTensor() as tracker:
    model, _ = build_llava(tower, llama, ds_config=ds_config)
params = dict(model.named_parameters())
facts = {
    "total": sum(p.ds_numel for p in params.values()),
    "count": len(params),
    "largest_param": max(p.ds_numel for p in params.values()),
    "local": sum(p.ds_tensor.numel() for p in params.values()),
    "held": sum(p.data.numel() for p in params.values()),
    "dtypes": sorted({str(p.dtype) for p in params.values()}),
    "largest_created": tracker.largest,
}
torch.manual_seed(0)
reference, _ = build_llava(tower, llama, dtype=torch.bfloat16)
import deepspeed
with deepspeed.zero.GatheredParameters(list(params.values())):
    reference = dict(reference.named_parameters())
    facts["equal"] = all(torch.equal(params[n].data, reference[n].data) for n in params)

# stage one's frozen models: the tower (transformers' ZeRO-3 loading) and the UNet + VAE (streamed)
from dcr_mllm.diffusion import FrozenDenoiser
from dcr_mllm.towers import load_tower
for name, build in (("tower", lambda ds: load_tower(tower, vision_only=True, ds_config=ds)),
                    ("denoiser", lambda ds: FrozenDenoiser.from_pretrained(sd, ds_config=ds))):
    module = build(ds_config)
    params = dict(module.named_parameters())
    reference = dict(build(None).named_parameters())
    with deepspeed.zero.GatheredParameters(list(params.values())):
        equal = all(torch.equal(params[n].data, reference[n].data.to(torch.bfloat16)) for n in params)
    facts[name] = {"total": sum(p.ds_numel for p in params.values()), "count": len(params), "local": sum(p.ds_tensor.numel() for p in params.values()),
                   "held": sum(p.data.numel() for p in params.values()), "dtypes": sorted({str(p.dtype) for p in params.values()}),
                   "equal": equal}
json.dump(facts, open(f"{out}/rank{info.rank}.json", "w"))
dist.barrier()
dist.destroy_process_group()
"""


def _torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def _error(result: subprocess.CompletedProcess) -> str:
    """The first traceback of a failed run (torchrun's own summary follows it)."""
    start = result.stderr.find("Traceback")
    return result.stderr[start : start + 4000] if start >= 0 else result.stderr[-4000:]


@pytest.mark.slow
@pytest.mark.distributed
def test_zero3_builds_llava_partitioned_at_construction(tiny, tmp_path):
    (tmp_path / "ds.json").write_text(json.dumps(ZERO3))
    (tmp_path / "check.py").write_text(textwrap.dedent(BUILD_CHECK))
    result = _torchrun(
        [
            str(tmp_path / "check.py"),
            str(tiny["clip"]),
            str(tiny["llama"]),
            str(tiny["sd"]),
            str(tmp_path / "ds.json"),
            str(tmp_path),
        ],
        REPO,
    )
    assert result.returncode == 0, _error(result)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for facts in ranks:
        assert facts["dtypes"] == ["torch.bfloat16"], "built in the training dtype"
        assert facts["held"] == 0, "outside a gather no rank holds any full parameter"
        assert facts["total"] / 2 <= facts["local"] <= facts["total"] / 2 + facts["count"], (
            "each rank holds half (rounded up per parameter)"
        )
        assert facts["largest_created"] < facts["total"] / 2, (
            "no tensor the size of the model (or of a rank's half) was ever created"
        )
        assert facts["equal"], "the partitioned model holds exactly the weights of the model built whole"
        for part in ("tower", "denoiser"):
            built = facts[part]
            assert built["dtypes"] == ["torch.bfloat16"] and built["held"] == 0, part
            assert built["total"] / 2 <= built["local"] <= built["total"] / 2 + built["count"], part
            assert built["equal"], f"the partitioned {part} holds the weights it loads whole"


@pytest.mark.slow
@pytest.mark.distributed
def test_zero3_pretrain_trains_and_resumes(tiny, tmp_path):
    (tmp_path / "ds.json").write_text(json.dumps(ZERO3))
    run_dir = tmp_path / "run"
    stage_dir = run_dir / "pretrain"
    args = [
        "-m",
        "dcr_mllm.cli",
        "llava-pretrain",
        f"tower={tiny['clip']}",
        "language_model=tiny-llama",
        f"output_dir={run_dir}",
        "synthetic_images=16",
        "pretrain.micro_batch_size=2",
        "pretrain.epochs=0",
        "pretrain.max_steps=3",
        "pretrain.save_every=1",
        "pretrain.num_workers=0",
        f"pretrain.deepspeed={tmp_path / 'ds.json'}",
        "pretrain.zero_stage=3",
    ]
    result = _torchrun(args, REPO)
    assert result.returncode == 0, _error(result)
    uninterrupted = load_file(stage_dir / "trainable.safetensors")
    assert uninterrupted and all(k.startswith("model.multi_modal_projector.") for k in uninterrupted)
    torch.manual_seed(0)
    initial, _ = build_llava(tiny["clip"], tiny["llama"])  # the projector as it started on every rank
    start = dict(initial.named_parameters())
    assert all(not torch.equal(uninterrupted[k], start[k]) for k in uninterrupted), "the projector trained"

    # as if killed during step 3: its checkpoint and the finished marker never written
    (stage_dir / "train_state.json").unlink()
    shutil.rmtree(stage_dir / "checkpoints" / "step_000003")
    (stage_dir / "checkpoints" / "latest").write_text("step_000002")
    result = _torchrun(args, REPO)
    assert result.returncode == 0, _error(result)
    assert "resumed from" in result.stdout and "at step 2" in result.stdout
    state = json.loads((stage_dir / "train_state.json").read_text())
    assert state["step"] == 3 and state["world_size"] == 2
    steps = [json.loads(line)["step"] for line in (stage_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3], "the second run trained only step 3, and the resume dropped the first run's step 3 line"
    resumed = load_file(stage_dir / "trainable.safetensors")
    for key, value in uninterrupted.items():
        assert torch.equal(resumed[key], value), f"resuming changed {key}"
