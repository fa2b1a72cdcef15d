"""GPU benchmark: the LoRA-stage DCR step at real size, random weights, no downloads.

Stable Diffusion 2.1-base UNet and VAE (their published configs), OpenAI CLIP ViT-L/14 at 224
and 336, bf16, B = 8 and 16: seconds per step, images per second, peak GPU memory and model
FLOPs utilisation (FLOPs of one step counted by ``torch.utils.flop_counter``, divided by the
time and the GPU's dense bf16 peak). Runs in a few minutes on one GPU:

    python bench/gpu_dcr_step.py                       # writes bench/results/gpu_dcr_step.json
    python bench/gpu_dcr_step.py --tiny --device cpu   # a smoke run of the same code on tiny configs
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

#: dense bf16 peak FLOP/s by GPU name fragment (vendor datasheets)
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12, "4090": 165e12}


def sd21_base(tiny: bool):
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    if tiny:
        unet = UNet2DConditionModel(sample_size=8, block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32,
                                    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                                    attention_head_dim=8, norm_num_groups=8)
        vae = AutoencoderKL(block_out_channels=(16, 32, 32), down_block_types=("DownEncoderBlock2D",) * 3,
                            up_block_types=("UpDecoderBlock2D",) * 3, layers_per_block=1, norm_num_groups=8)
    else:  # stabilityai/stable-diffusion-2-1-base unet/config.json and vae/config.json
        unet = UNet2DConditionModel(
            sample_size=64, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, cross_attention_dim=1024,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",), up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            attention_head_dim=(5, 10, 20, 20), use_linear_projection=True)
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4, sample_size=512)
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", prediction_type="epsilon")
    return unet, vae, scheduler


def clip_l14(image_size: int, tiny: bool):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from dcr_mllm.towers.base import TowerSpec
    from dcr_mllm.towers.hf import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, HFTower

    if tiny:
        config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2, image_size=32, patch_size=8, projection_dim=16)
    else:  # openai/clip-vit-large-patch14(-336)
        config = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                                  image_size=image_size, patch_size=14, projection_dim=768, hidden_act="quick_gelu")
    spec = TowerSpec("clip", config.image_size, config.patch_size, config.hidden_size, config.num_hidden_layers,
                     config.projection_dim, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, True)
    return HFTower(CLIPVisionModelWithProjection(config), spec, None)


def build(image_size: int, chunk_size: int, device: torch.device, dtype: torch.dtype, tiny: bool):
    from dcr_mllm.diffusion import ConditionProjector, FrozenDenoiser
    from dcr_mllm.objectives import EnhanceModel, ObjectiveConfig
    from dcr_mllm.towers import apply_lora

    torch.manual_seed(0)
    unet, vae, scheduler = sd21_base(tiny)
    width = unet.config.cross_attention_dim
    denoiser = FrozenDenoiser(unet, vae, scheduler, torch.randn(1, 77, width))  # the empty prompt is a constant
    tower = clip_l14(image_size, tiny)
    projector = ConditionProjector(tower.spec.global_dim, width)
    model = EnhanceModel(tower, projector, denoiser, ObjectiveConfig(chunk_size=chunk_size, vae_image_size=32 if tiny else 512))
    model.requires_grad_(False)
    apply_lora(tower, r=16, alpha=16, dropout=0.1)
    return model.to(device=device, dtype=dtype)


def run(image_size: int, batch: int, chunk: int, device: torch.device, tiny: bool, steps: int) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = build(image_size, chunk, device, dtype, tiny)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(batch, 3, image_size if not tiny else 32, image_size if not tiny else 32, generator=generator).to(device)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss, _ = model(images, generator)
        loss.backward()
        optimizer.step()

    with FlopCounterMode(display=False) as counter:
        step()  # also the warm-up
    flops = counter.get_total_flops()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps
    result = {"image_size": image_size, "batch": batch, "chunk": chunk, "denoiser_calls": batch * batch + batch,
              "seconds_per_step": seconds, "images_per_second": batch / seconds, "tflops_per_step": flops / 1e12}
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
        result.update(gpu=name, peak_memory_gib=torch.cuda.max_memory_allocated(device) / 2**30,
                      mfu=flops / seconds / peak if peak else None)
    del model, optimizer
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny configs: check the script itself, anywhere")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--chunk", type=int, default=32, help="denoiser calls per chunk (activation checkpointing)")
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "gpu_dcr_step.json"))
    args = parser.parse_args()
    device = torch.device(args.device)
    results = []
    for image_size in (224, 336):
        for batch in (8, 16):
            row = run(image_size, batch, args.chunk, device, args.tiny, args.steps)
            results.append(row)
            print(json.dumps(row))
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"tiny": args.tiny, "device": str(device), "results": results}, indent=2))
    print(f"written: {out}")


if __name__ == "__main__":
    main()
