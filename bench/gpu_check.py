"""The GPU check: the real-size steps a GPU run takes, through the same DeepSpeed bf16 path.

(a) Stage one's LoRA-stage DCR step at real size — Stable Diffusion 2.1-base UNet + VAE and
    OpenAI CLIP ViT-L/14 @224 and @336 from their published configs, random weights, bf16
    through DeepSpeed (ZeRO-2, fp32 masters), B = 8 and 16, unchunked and chunked;
(b) one LLaVA-1.5-7B-shaped LoRA finetune step (Vicuna-7B-shaped Llama, CLIP ViT-L/14-336,
    LoRA r 128 on every projection, gradient checkpointing) under ZeRO-3, the model created
    partitioned.

Each row: seconds per step, images per second, peak GPU memory, FLOPs of one step counted by
``torch.utils.flop_counter`` and model FLOPs utilisation against the GPU's dense bf16 peak.
``--smoke`` runs the same code on tiny configs on CPU (the test suite does). Launch it through
``bench/gpu_check.sh``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

#: dense bf16 peak FLOP/s by GPU name fragment (vendor datasheets)
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12, "4090": 165e12}


def train_config(micro_batch_size: int, zero_stage: int):
    from dcr_mllm.training import TrainConfig

    return TrainConfig(micro_batch_size=micro_batch_size, zero_stage=zero_stage, precision="bf16", lr=1e-5)


def engine_for(model: torch.nn.Module, cfg, dist_info):
    """The DeepSpeed engine a recipe's Trainer builds: bf16, fp32 masters, the project's config."""
    import deepspeed

    from dcr_mllm.training.ds_config import deepspeed_config

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=deepspeed_config(cfg, dist_info))
    return engine


# ---------------------------------------------------------------- (a) the DCR step
def sd21_base(smoke: bool):
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    if smoke:
        unet = UNet2DConditionModel(
            sample_size=8,
            block_out_channels=(32, 64),
            layers_per_block=1,
            cross_attention_dim=32,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            attention_head_dim=8,
            norm_num_groups=8,
        )
        vae = AutoencoderKL(
            block_out_channels=(16, 32, 32),
            down_block_types=("DownEncoderBlock2D",) * 3,
            up_block_types=("UpDecoderBlock2D",) * 3,
            layers_per_block=1,
            norm_num_groups=8,
        )
    else:  # stabilityai/stable-diffusion-2-1-base unet/config.json and vae/config.json
        unet = UNet2DConditionModel(
            sample_size=64,
            block_out_channels=(320, 640, 1280, 1280),
            layers_per_block=2,
            cross_attention_dim=1024,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            attention_head_dim=(5, 10, 20, 20),
            use_linear_projection=True,
        )
        vae = AutoencoderKL(
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=2,
            latent_channels=4,
            sample_size=512,
        )
    scheduler = DDPMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", prediction_type="epsilon"
    )
    return unet, vae, scheduler


def clip_l14_vision(image_size: int, smoke: bool):
    from transformers import CLIPVisionConfig

    if smoke:
        return CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=3,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
            projection_dim=16,
        )
    # openai/clip-vit-large-patch14(-336) vision_config
    return CLIPVisionConfig(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        image_size=image_size,
        patch_size=14,
        projection_dim=768,
        hidden_act="quick_gelu",
    )


def dcr_model(image_size: int, chunk_size: int, smoke: bool):
    from transformers import CLIPVisionModelWithProjection

    from dcr_mllm.diffusion import ConditionProjector, FrozenDenoiser
    from dcr_mllm.normalization import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    from dcr_mllm.objectives import EnhanceModel, objective_settings
    from dcr_mllm.towers import apply_lora
    from dcr_mllm.towers.base import TowerSpec
    from dcr_mllm.towers.clip import CLIP
    from dcr_mllm.towers.hf import HFTower
    from dcr_mllm.towers.lora import LoraSettings

    torch.manual_seed(0)
    unet, vae, scheduler = sd21_base(smoke)
    width = unet.config.cross_attention_dim
    denoiser = FrozenDenoiser(unet, vae, scheduler, torch.randn(1, 77, width))  # the empty prompt is a constant
    config = clip_l14_vision(image_size, smoke)
    spec = TowerSpec(
        CLIP,
        config.image_size,
        config.patch_size,
        config.hidden_size,
        config.num_hidden_layers,
        config.projection_dim,
        OPENAI_CLIP_MEAN,
        OPENAI_CLIP_STD,
        True,
    )
    tower = HFTower(CLIPVisionModelWithProjection(config), spec, None)
    projector = ConditionProjector(spec.global_dim, width)
    model = EnhanceModel(tower, projector, denoiser, objective_settings(chunk_size=chunk_size))
    model.requires_grad_(False)
    apply_lora(tower, LoraSettings(r=16, alpha=16, dropout=0.1))
    return model, spec.image_size


def dcr_step_row(image_size: int, batch: int, chunk: int, dist_info, smoke: bool, steps: int) -> dict:
    model, size = dcr_model(image_size, chunk, smoke)
    engine = engine_for(model.to(dist_info.device), train_config(batch, zero_stage=2), dist_info)
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(batch, 3, size, size, generator=generator).to(dist_info.device)

    def step():
        loss, _ = engine(images, generator)
        engine.backward(loss)
        engine.step()

    row = measure(step, steps, dist_info.device, images=batch)
    row.update(part="dcr_step", image_size=image_size, batch=batch, chunk=chunk, denoiser_calls=batch * batch + batch)
    return row


# ---------------------------------------------------------------- (b) the LLaVA LoRA step
def llava_7b_config(smoke: bool):
    from transformers import LlamaConfig, LlavaConfig

    vision = clip_l14_vision(336, smoke)
    if smoke:
        text = LlamaConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            vocab_size=512,
            max_position_embeddings=512,
        )
    else:  # lmsys/vicuna-7b-v1.5 config.json, vocabulary padded as llava-hf's (32064)
        text = LlamaConfig(
            hidden_size=4096,
            intermediate_size=11008,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=32,
            vocab_size=32064,
            max_position_embeddings=4096,
            rms_norm_eps=1e-5,
        )
    patches = (vision.image_size // vision.patch_size) ** 2
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=text.vocab_size - 64,
        image_seq_length=patches,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )


def llava_lora_row(dist_info, smoke: bool, steps: int, batch: int, text_tokens: int) -> dict:
    from transformers import LlavaForConditionalGeneration

    from dcr_mllm.llava.build import add_language_lora
    from dcr_mllm.llava.train.recipe import LanguageLora
    from dcr_mllm.training.zero import transformers_zero3, zero3_config

    config = llava_7b_config(smoke)
    cfg = train_config(batch, zero_stage=3)
    torch.manual_seed(0)
    started = time.perf_counter()
    with transformers_zero3(zero3_config(cfg)):  # random init, created partitioned (zero.Init)
        model = LlavaForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
    build_seconds = time.perf_counter() - started
    model.requires_grad_(False)
    add_language_lora(model, LanguageLora())
    for name, param in model.named_parameters():
        param.requires_grad_("lora_" in name or "multi_modal_projector" in name)
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    engine = engine_for(model, cfg, dist_info)

    generator = torch.Generator().manual_seed(0)
    image_tokens = config.image_seq_length
    text = torch.randint(0, config.image_token_index, (batch, text_tokens), generator=generator)
    input_ids = torch.cat([torch.full((batch, image_tokens), config.image_token_index), text], dim=1).to(
        dist_info.device
    )
    labels = input_ids.masked_fill(input_ids == config.image_token_index, -100)
    size = config.vision_config.image_size
    pixels = torch.randn(batch, 3, size, size, generator=generator).to(dist_info.device, torch.bfloat16)

    def step():
        loss = engine(
            input_ids=input_ids, attention_mask=torch.ones_like(input_ids), labels=labels, pixel_values=pixels
        ).loss
        engine.backward(loss)
        engine.step()

    row = measure(step, steps, dist_info.device, images=batch)
    row.update(
        part="llava_lora_step",
        zero_stage=3,
        batch=batch,
        sequence=input_ids.shape[1],
        build_seconds=build_seconds,
        parameters=sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in model.parameters()),
    )
    return row


# ---------------------------------------------------------------- measurement
def measure(step, steps: int, device: torch.device, images: int) -> dict:
    """One counted warm-up step (FLOPs), then ``steps`` timed ones."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
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
    row = {"seconds_per_step": seconds, "images_per_second": images / seconds, "tflops_per_step": flops / 1e12}
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
        row.update(
            gpu=name,
            peak_memory_gib=torch.cuda.max_memory_allocated(device) / 2**30,
            mfu=flops / seconds / peak if peak else None,
        )
        torch.cuda.empty_cache()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny configs on CPU: the same code, checked anywhere")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per row (after one counted warm-up)")
    parser.add_argument("--chunk", type=int, default=32, help="denoiser calls per chunk for the chunked rows")
    parser.add_argument("--skip-llava", action="store_true", help="only part (a)")
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "gpu_check.json"))
    args = parser.parse_args()

    from dcr_mllm.training import init_distributed

    dist_info = init_distributed()
    if dist_info.device.type != "cuda" and not args.smoke:
        raise SystemExit("error: no CUDA device here; run with --smoke for the CPU check of the same code")
    rows = []
    for image_size in (224, 336):
        for batch in (8, 16):
            for chunk in (0, args.chunk):
                rows.append(dcr_step_row(image_size, batch, chunk, dist_info, args.smoke, args.steps))
                print(json.dumps(rows[-1]), flush=True)
    if not args.skip_llava:
        rows.append(
            llava_lora_row(
                dist_info, args.smoke, args.steps, batch=2 if args.smoke else 4, text_tokens=16 if args.smoke else 448
            )
        )
        print(json.dumps(rows[-1]), flush=True)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"smoke": args.smoke, "device": str(dist_info.device), "rows": rows}, indent=2))
    print(f"written: {out}")


if __name__ == "__main__":
    main()
