"""Benchmark: one instruction-tuning step of the world's LLaVA (world-clip, the tiny Llama, batch 32
of the world's open-question conversations), one thread, against a plain matmul of the same FLOPs.

Each variant runs in its own one-thread process, the variants taking turns round after round:
- ``before``: the loss as transformers computes it (``labels=``: logits at every position) and
  glibc's mmap threshold pinned to 128 KiB (what every CPU process set before it was limited to
  ZeRO-3: each large buffer a fresh mapping, its pages faulted in again every step);
- ``heap``: the same loss, glibc's default allocator settings;
- ``after``: the LM head only where a label follows (``llava.train.recipe.llava_loss``), default settings.
FLOPs are counted with torch's ``FlopCounterMode`` over forward and backward; the reference is one
float32 matmul of about the same FLOPs (the arithmetic this core can do, in one call).

    .venv/bin/python bench/llava_step.py            # about 2 minutes; writes bench/results/llava_step.json
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
VARIANTS = ("before", "heap", "after")
STEPS, WARMUP, ROUNDS, BATCH = 6, 2, 3, 32


def measure(variant: str, data_dir: str) -> dict:
    import ctypes
    import time

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from dcr_mllm.config import load_config
    from dcr_mllm.llava.build import build_llava
    from dcr_mllm.llava.train.batches import GroupedBatches
    from dcr_mllm.llava.train.recipe import LlavaTrainConfig, conversation_data, llava_loss, read_records
    from dcr_mllm.presets.real import local_path

    torch.set_num_threads(1)
    if variant == "before":
        ctypes.CDLL("libc.so.6").mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD
    cfg = load_config(
        LlavaTrainConfig,
        HERE.parent / "dcr_mllm" / "configs" / "llava_world.yaml",
        ["tower=world-clip", f"output_dir={data_dir}/run"],
    )
    torch.manual_seed(0)
    model, processor = build_llava(cfg.tower, local_path(cfg.language_model), cfg.feature_layer)
    model.requires_grad_(False)
    for part in (model.model.multi_modal_projector, model.model.language_model, model.lm_head):
        part.requires_grad_(True)
    data = conversation_data(
        cfg, "finetune", processor, read_records(f"{data_dir}/finetune_open.json"), f"{data_dir}/images"
    )
    batches = iter(GroupedBatches(data, BATCH, pad_token_id=processor.tokenizer.pad_token_id))
    batch = next(batches)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def loss_of(b):
        if variant == "after":
            return llava_loss(model, b, "cpu", torch.float32)
        return model(
            input_ids=b["input_ids"],
            attention_mask=b["attention_mask"],
            labels=b["labels"],
            pixel_values=b["pixel_values"],
        ).loss

    def step(b):
        loss = loss_of(b)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    with FlopCounterMode(display=False) as counter:
        loss_of(batch).backward()
    optimizer.zero_grad()
    flops = counter.get_total_flops()
    times = []
    for i in range(WARMUP + STEPS):
        start = time.perf_counter()
        step(batch)
        if i >= WARMUP:
            times.append(time.perf_counter() - start)
    n = 1024
    k = max(1, round(flops / (2 * n * n)))
    a, b = torch.randn(n, k), torch.randn(k, n)
    matmul = []
    for i in range(WARMUP + STEPS):
        start = time.perf_counter()
        a @ b
        if i >= WARMUP:
            matmul.append(time.perf_counter() - start)
    return {
        "variant": variant,
        "seconds": statistics.median(times),
        "gflop": flops / 1e9,
        "tokens": int(batch["input_ids"].numel()),
        "matmul_seconds": statistics.median(matmul),
        "matmul_gflop": 2 * n * n * k / 1e9,
    }


def main() -> None:
    from dcr_mllm.world.conversations import write_world_conversations
    from dcr_mllm.world.shipped import cpu_model

    with tempfile.TemporaryDirectory() as tmp:
        data = write_world_conversations(Path(tmp) / "llava", 2 * BATCH, 13)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        runs = {v: [] for v in VARIANTS}
        for _ in range(ROUNDS):
            for variant in VARIANTS:
                out = subprocess.run(
                    [sys.executable, __file__, "--variant", variant, str(data)], env=env, capture_output=True, text=True
                )
                if out.returncode:
                    sys.exit(out.stderr[-3000:])
                runs[variant].append(json.loads(out.stdout.strip().splitlines()[-1]))
    rows = []
    for variant, results in runs.items():
        seconds = statistics.median(r["seconds"] for r in results)
        matmul = statistics.median(r["matmul_seconds"] for r in results)
        gflop, reference = results[0]["gflop"], results[0]["matmul_gflop"]
        rows.append(
            {
                "variant": variant,
                "ms_per_step": round(1000 * seconds, 1),
                "step_gflop": round(gflop, 2),
                "step_gflop_per_s": round(gflop / seconds, 1),
                "matmul_gflop_per_s": round(reference / matmul, 1),
                "tokens_per_batch": results[0]["tokens"],
                "rounds_ms": [round(1000 * r["seconds"], 1) for r in results],
            }
        )
    before = rows[0]["ms_per_step"]
    for row in rows:
        row["speedup"] = round(before / row["ms_per_step"], 2)
    record = {"cpu": cpu_model(), "threads": 1, "batch": BATCH, "steps": STEPS, "rounds": ROUNDS, "variants": rows}
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "llava_step.json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"world LLaVA instruction step, batch {BATCH}, one thread, {record['cpu']}")
    print("| variant | ms/step | GFLOP/step | GFLOP/s | 1-thread matmul GFLOP/s | speed-up |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['variant']} | {r['ms_per_step']} | {r['step_gflop']} | {r['step_gflop_per_s']} | {r['matmul_gflop_per_s']} | {r['speedup']}x |"
        )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--variant"]:
        print(json.dumps(measure(sys.argv[2], sys.argv[3])))
    else:
        main()
