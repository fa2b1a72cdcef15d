"""Benchmark: one LoRA-stage DCR training step, dcr-mllm against a plain transcription of upstream's.

Upstream's step (transcribed below, same tiny models and the same loss formula) recomputes the
empty-prompt text embedding every step, augments image by image after moving each to the CPU,
runs the tower twice (original, then augmented) and evaluates all B*B+B denoiser calls in one
unchunked batch. Each configuration runs in its own process; "step memory" is how far the training steps raise
its peak RSS above what the loaded models already hold (about 1 GiB of libraries and weights).

    .venv/bin/python bench/dcr_step.py            # writes bench/results/dcr_step.json
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

STEPS, WARMUP = 5, 1
HERE = Path(__file__).resolve().parent


def build(chunk_size: int):
    import torch

    from dcr_mllm.diffusion import ConditionProjector, FrozenDenoiser
    from dcr_mllm.objectives import EnhanceModel, objective_settings
    from dcr_mllm.presets import ensure_tiny
    from dcr_mllm.towers import apply_lora, load_tower
    from dcr_mllm.towers.lora import LoraSettings

    torch.manual_seed(0)
    tower = load_tower(ensure_tiny("clip"), vision_only=True)
    denoiser = FrozenDenoiser.from_pretrained(ensure_tiny("sd"))
    projector = ConditionProjector(tower.spec.global_dim, denoiser.cross_attention_dim)
    model = EnhanceModel(tower, projector, denoiser, objective_settings(chunk_size=chunk_size))
    model.requires_grad_(False)
    apply_lora(tower, LoraSettings(r=16, alpha=16, dropout=0.1))
    return model


def upstream_step(model, images, generator, text_encoder, tokenizer):
    """Upstream's order of work, kept literal (the loss formula is the same as ours)."""
    import torch
    import torch.nn.functional as F
    from torchvision import transforms

    ids = tokenizer([""], padding="max_length", max_length=77, return_tensors="pt").input_ids
    empty = text_encoder(ids)[0]  # recomputed every step
    augment = transforms.Compose(
        [
            transforms.RandomResizedCrop(images.shape[-1], scale=(0.9, 1.0), ratio=(0.9, 1.1)),
            transforms.RandomHorizontalFlip(),
            transforms.RandomVerticalFlip(),
            transforms.ColorJitter(0.1, 0.1, 0.1, 0.05),
        ]
    )
    normalized = model.tower.normalize(images)
    augmented = torch.stack([augment(x.cpu()) for x in normalized]).to(images.device)  # one by one, after normalisation
    original_embedding = model.tower.global_embedding(normalized)  # the tower, twice
    augmented_embedding = model.tower.global_embedding(augmented)
    contexts = model.projector(torch.cat([original_embedding, augmented_embedding]), empty)
    denoiser = model.denoiser
    latents = denoiser.encode(images, generator)
    noise = torch.randn(latents.shape, generator=generator)
    timesteps = torch.randint(0, denoiser.num_timesteps, (len(images),), generator=generator)
    noisy = denoiser.add_noise(latents, noise, timesteps)
    target = denoiser.target(latents, noise, timesteps, "velocity")
    b = len(images)
    latent_index = torch.cat([torch.arange(b).repeat_interleave(b), torch.arange(b)])
    context_index = torch.cat([torch.arange(b).repeat(b), b + torch.arange(b)])
    preds = denoiser.predict(noisy[latent_index], timesteps[latent_index], contexts[context_index])  # all at once
    pairwise, positive = preds[: b * b].view(b, b, -1), preds[b * b :].flatten(1)
    anchor = F.normalize(torch.diagonal(pairwise).T, dim=-1)
    pos, tgt = F.normalize(positive, dim=-1), F.normalize(target.flatten(1), dim=-1)
    negatives = F.normalize(pairwise, dim=-1)
    losses = []
    for i in range(b):
        sims = (
            torch.cat(
                [
                    (anchor[i] * pos[i]).sum()[None],
                    (anchor[i] * tgt[i]).sum()[None],
                    (negatives[i][torch.arange(b) != i] @ anchor[i]),
                ]
            )
            / 0.1
        )
        denominator = torch.exp(sims).sum()
        losses.append(
            0.5 * (-torch.log(torch.exp(sims[0]) / denominator) - torch.log(torch.exp(sims[1]) / denominator))
        )
    return torch.stack(losses).mean()


def run_one(kind: str, batch: int, chunk: int) -> dict:
    """Time STEPS optimizer steps (after WARMUP) of one configuration; report its peak RSS."""
    import torch
    from transformers import AutoTokenizer, CLIPTextModel

    from dcr_mllm.presets import ensure_tiny

    torch.set_num_threads(1)
    model = build(chunk)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(batch, 3, 32, 32, generator=generator)
    if kind == "upstream":
        sd = ensure_tiny("sd")
        tokenizer = AutoTokenizer.from_pretrained(sd, subfolder="tokenizer")
        text_encoder = CLIPTextModel.from_pretrained(sd, subfolder="text_encoder")
    start, before = 0.0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for step in range(WARMUP + STEPS):
        if step == WARMUP:
            start = time.perf_counter()
        optimizer.zero_grad()
        if kind == "upstream":
            loss = upstream_step(model, images, generator, text_encoder, tokenizer)
        else:
            loss, _ = model(images, generator)
        loss.backward()
        optimizer.step()
    seconds = (time.perf_counter() - start) / STEPS
    return {
        "kind": kind,
        "batch": batch,
        "chunk": chunk,
        "seconds_per_step": seconds,
        "samples_per_second": batch / seconds,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "step_memory_mib": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024,
    }


def measure(kind: str, batch: int, chunk: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--one", kind, str(batch), str(chunk)],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    if out.returncode:
        raise SystemExit(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    results = {"speed": [], "chunking": []}
    for batch in (8, 16):
        ours, upstream = measure("dcr-mllm", batch, 0), measure("upstream", batch, 0)
        row = {
            "batch": batch,
            "dcr_mllm": ours,
            "upstream": upstream,
            "speedup": ours["samples_per_second"] / upstream["samples_per_second"],
            "step_memory_ratio": ours["step_memory_mib"] / upstream["step_memory_mib"],
        }
        results["speed"].append(row)
        print(
            f"B={batch:2d}: dcr-mllm {ours['samples_per_second']:.1f} img/s, step memory {ours['step_memory_mib']:.0f} MiB | "
            f"upstream {upstream['samples_per_second']:.1f} img/s, {upstream['step_memory_mib']:.0f} MiB | "
            f"speed x{row['speedup']:.2f}, step memory x{row['step_memory_ratio']:.2f}"
        )
    for batch in (16, 32):
        whole, chunked = measure("dcr-mllm", batch, 0), measure("dcr-mllm", batch, batch)
        results["chunking"].append({"batch": batch, "chunk": batch, "unchunked": whole, "chunked": chunked})
        print(
            f"B={batch:2d}: step memory unchunked {whole['step_memory_mib']:.0f} MiB, chunked ({batch} calls) {chunked['step_memory_mib']:.0f} MiB, "
            f"{whole['seconds_per_step']:.2f} vs {chunked['seconds_per_step']:.2f} s/step"
        )
    out = HERE / "results" / "dcr_step.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"written: {out}")


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--one":
        print(json.dumps(run_one(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))))
    else:
        main()
