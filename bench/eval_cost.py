"""Benchmark: what evaluation during training (``eval:``) adds to stage one.

Two parts:

* ``wall`` (CPU, default): the tiny world's stage one at its packaged settings
  (``dcr_mllm/configs/enhance_world.yaml``: 60 projector + 100 LoRA steps, the world benchmark on
  the validation set every 20 LoRA steps, at step 0 and at the last step) with and without
  evaluation. The projector stage runs once (evaluation does not touch it) and counts in the
  denominator; the LoRA stage runs ``--rounds`` times each way, the two taking turns, each in its
  own one-thread process. The script also checks that both reach the same weights.
* ``flops``: the paper-scale arithmetic. torch's ``FlopCounterMode`` counts the forward and
  backward FLOPs of SD 2.1-base's UNet (64x64 latents, a 77-token 1024-wide context) and of CLIP
  ViT-L/14-224, built on the meta device (no weights, no GPU), and from them one optimizer step of
  ``stages/configs/enhance_clip_l14_224.yaml``'s LoRA stage (micro batch 16, 2 accumulation steps,
  DCR's B x (B + 1) UNet calls per micro batch) against one MMVP-VLM evaluation (300 images, 300
  statements). The evaluation runs on the main rank while the others wait, so the per-GPU step is the
  denominator whatever the GPU count.

    .venv/bin/python bench/eval_cost.py            # both; writes bench/results/eval_cost.json
    .venv/bin/python bench/eval_cost.py --part flops
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def enhance(args: list[str]) -> float:
    """One ``dcr-mllm enhance`` process on one thread; its wall time."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "dcr_mllm.cli",
            "enhance",
            "--config",
            str(ROOT / "dcr_mllm/configs/enhance_world.yaml"),
            *args,
        ],
        env=env,
        check=True,
        capture_output=True,
        cwd=ROOT,
    )
    return time.perf_counter() - start


def wall(rounds: int) -> dict:
    from safetensors.torch import load_file

    from dcr_mllm.world.prepare import prepare_world

    work = Path(tempfile.mkdtemp(prefix="eval_cost_"))
    world = prepare_world(work / "world", conversation_count=0)
    common = [f"data.shards={world['shards']}"]
    watched = [f"eval.benchmarks=[{{name: world, data: {world['val']}}}]"]
    projector = enhance(["--stage", "projector", f"output_dir={work / 'base'}", *common, *watched])
    times: dict[str, list[float]] = {"without": [], "with": []}
    for round_ in range(rounds):
        for mode in ("without", "with") if round_ % 2 == 0 else ("with", "without"):
            run = work / f"{mode}{round_}"
            shutil.copytree(work / "base" / "projector", run / "projector")
            extra = watched if mode == "with" else ["eval.every=0", "eval.benchmarks=[]"]
            times[mode].append(enhance(["--stage", "lora", f"output_dir={run}", *common, *extra]))
            print(f"round {round_} {mode}: {times[mode][-1]:.1f} s", flush=True)
    a, b = (load_file(work / f"{mode}0" / "lora" / "trainable.safetensors") for mode in ("without", "with"))
    same = a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    evaluations = len((work / "with0" / "lora" / "eval.jsonl").read_text().splitlines())
    without, with_ = statistics.median(times["without"]), statistics.median(times["with"])
    shutil.rmtree(work)
    return {
        "projector_stage_s": projector,
        "lora_without_s": times["without"],
        "lora_with_s": times["with"],
        "evaluations": evaluations,
        "per_evaluation_s": (with_ - without) / evaluations,
        "added_to_stage_one": (with_ - without) / (projector + without),
        "same_weights": bool(same),
    }


def counted(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def flops(every: int) -> dict:
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModel

    with torch.device("meta"):  # SD 2.1-base (stabilityai/stable-diffusion-2-1-base unet/config.json), CLIP ViT-L/14
        unet = UNet2DConditionModel(
            sample_size=64, cross_attention_dim=1024, attention_head_dim=[5, 10, 20, 20], use_linear_projection=True
        )
        vae = AutoencoderKL(
            block_out_channels=[128, 256, 512, 512],
            down_block_types=["DownEncoderBlock2D"] * 4,
            up_block_types=["UpDecoderBlock2D"] * 4,
            latent_channels=4,
            layers_per_block=2,
            sample_size=512,
        )
        vision = CLIPVisionModel(
            CLIPVisionConfig(
                hidden_size=1024,
                intermediate_size=4096,
                num_hidden_layers=24,
                num_attention_heads=16,
                patch_size=14,
                image_size=224,
            )
        )
        text = CLIPTextModel(
            CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)
        )
        for frozen in (
            unet,
            vae,
            vision,
            text,
        ):  # frozen (LoRA's own gradients are negligible): backward = activation gradients only
            frozen.requires_grad_(False)
        latent = torch.randn(1, 4, 64, 64)
        context = torch.randn(
            1, 77, 1024, requires_grad=True
        )  # the condition: gradients flow back through the frozen UNet
        pixels = torch.randn(1, 3, 224, 224, requires_grad=True)  # LoRA: activation gradients through the whole tower
        unet_call = counted(
            lambda: unet(latent, torch.tensor([500]), encoder_hidden_states=context).sample.sum().backward()
        )
        tower_call = counted(lambda: vision(pixel_values=pixels).pooler_output.sum().backward())
        vae_encode = counted(lambda: vae.encode(torch.randn(1, 3, 512, 512)).latent_dist.mean)
        with torch.no_grad():
            tower_forward = counted(lambda: vision(pixel_values=torch.randn(1, 3, 224, 224)).pooler_output)
            text_forward = counted(lambda: text(input_ids=torch.zeros(1, 77, dtype=torch.long)).pooler_output)
    batch, accum = 16, 2
    micro = batch * (batch + 1) * unet_call + batch * (
        vae_encode + 2 * tower_call
    )  # two views of each image through the tower
    step = accum * micro
    evaluation = 300 * tower_forward + 300 * text_forward
    return {
        "unet_call_fwd_bwd": unet_call,
        "tower_fwd_bwd": tower_call,
        "vae_encode": vae_encode,
        "tower_forward": tower_forward,
        "text_forward": text_forward,
        "lora_step": step,
        "mmvp_vlm_evaluation": evaluation,
        "evaluation_in_steps": evaluation / step,
        "every": every,
        "added_at_every": evaluation / (every * step),
        "smallest_every_under_5_percent": int(-(-evaluation // (0.05 * step))),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["all", "wall", "flops"], default="all")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--every", type=int, default=100, help="eval.every for the paper-scale arithmetic")
    args = parser.parse_args()
    out = HERE / "results" / "eval_cost.json"
    results = json.loads(out.read_text()) if out.is_file() else {}
    if args.part in ("all", "flops"):
        results["flops"] = flops(args.every)
        f = results["flops"]
        print(
            f"UNet call (fwd+bwd) {f['unet_call_fwd_bwd'] / 1e9:.0f} GFLOP; LoRA step {f['lora_step'] / 1e12:.0f} TFLOP; "
            f"MMVP-VLM evaluation {f['mmvp_vlm_evaluation'] / 1e12:.1f} TFLOP = {f['evaluation_in_steps']:.3f} steps; "
            f"every {args.every}: +{100 * f['added_at_every']:.2f}%; under 5% from every {f['smallest_every_under_5_percent']}"
        )
    if args.part in ("all", "wall"):
        results["wall"] = {**wall(args.rounds), "cpu": cpu_model()}
        w = results["wall"]
        print(
            f"projector stage {w['projector_stage_s']:.0f} s; LoRA stage without {statistics.median(w['lora_without_s']):.0f} s, with "
            f"{statistics.median(w['lora_with_s']):.0f} s ({w['evaluations']} evaluations, {w['per_evaluation_s']:.1f} s each): "
            f"+{100 * w['added_to_stage_one']:.1f}% of stage one; same weights: {w['same_weights']}"
        )
    out.write_text(json.dumps(results, indent=1))


def cpu_model() -> str:
    for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
        if line.startswith("Model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


if __name__ == "__main__":
    main()
