"""Benchmark: DCR negatives from the local batch against negatives drawn from the global batch.

Two CPU ranks (torchrun, gloo, one thread each), per-rank B = 8, tiny preset, LoRA-stage step
(gradients averaged over the ranks as DeepSpeed and DDP do). Three settings:

    local       the other 7 images of the rank           B x (B + 1) = 72 UNet calls per rank
    global K=7  7 sampled from the 15 others of both      B x (K + 2) = 72
    global K=15 all 15 others of both ranks              B x (K + 2) = 136

Each measurement is its own torchrun launch (peak RSS is a process's lifetime maximum); the
settings take turns in every round and the figures are medians over the rounds.

    .venv/bin/python bench/negatives.py            # writes bench/results/negatives.json
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROUNDS, STEPS, WARMUP, BATCH = 5, 8, 1, 8
SETTINGS = [("local", 0), ("global", 7), ("global", 15)]


def rank_run(negatives: str, k: int, out: str) -> None:
    """One rank's timed steps; writes its seconds per step and peak RSS to out/rank{r}.json."""
    import torch
    import torch.distributed as dist

    sys.path.insert(0, str(HERE))
    from dcr_step import build

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    model = build(chunk_size=0)
    model.config.negatives, model.config.num_negatives = negatives, k
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=1e-5)
    generator = torch.Generator().manual_seed(rank)
    images = torch.rand(BATCH, 3, 32, 32, generator=generator)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = 0.0
    for step in range(WARMUP + STEPS):
        if step == WARMUP:
            dist.barrier()
            start = time.perf_counter()
        optimizer.zero_grad()
        loss, _ = model(images, generator)
        loss.backward()
        grads = [p.grad for p in trained]
        flat = torch.cat([g.flatten() for g in grads])
        dist.all_reduce(flat)  # one bucket, averaged over the ranks
        for grad, averaged in zip(grads, torch._utils._unflatten_dense_tensors(flat / world, grads)):
            grad.copy_(averaged)
        optimizer.step()
    dist.barrier()
    seconds = (time.perf_counter() - start) / STEPS
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    Path(out, f"rank{rank}.json").write_text(
        json.dumps(
            {"seconds_per_step": seconds, "peak_rss_mib": peak / 1024, "step_memory_mib": (peak - before) / 1024}
        )
    )
    dist.destroy_process_group()


def measure(negatives: str, k: int) -> list[dict]:
    with tempfile.TemporaryDirectory() as out:
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            __file__,
            "--rank",
            negatives,
            str(k),
            out,
        ]
        result = subprocess.run(
            command, check=False, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}
        )
        if result.returncode:
            raise SystemExit(result.stderr[-3000:])
        return [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(2)]


def main() -> None:
    runs: dict[str, list] = {}
    for round_ in range(ROUNDS):
        order = (
            SETTINGS[round_ % len(SETTINGS) :] + SETTINGS[: round_ % len(SETTINGS)]
        )  # a different first setting each round
        for negatives, k in order:
            name = f"{negatives} K={k or BATCH - 1}"
            ranks = measure(negatives, k)
            runs.setdefault(name, []).append(ranks)
            print(
                f"round {round_}: {name}: {max(r['seconds_per_step'] for r in ranks):.2f} s/step, "
                f"peak RSS {[round(r['peak_rss_mib']) for r in ranks]} MiB",
                flush=True,
            )
    summary = []
    for (negatives, k), (name, rounds) in zip(SETTINGS, runs.items()):
        kk = k or BATCH - 1
        summary.append(
            {
                "setting": name,
                "negatives": negatives,
                "num_negatives": kk,
                "negative_pool": BATCH - 1 if negatives == "local" else 2 * BATCH - 1,
                "unet_calls_per_rank": BATCH * (BATCH + 1) if negatives == "local" else BATCH * (kk + 2),
                "seconds_per_step": statistics.median(max(r["seconds_per_step"] for r in ranks) for ranks in rounds),
                "peak_rss_mib_per_rank": [
                    statistics.median(ranks[i]["peak_rss_mib"] for ranks in rounds) for i in range(2)
                ],
                "step_memory_mib_per_rank": [
                    statistics.median(ranks[i]["step_memory_mib"] for ranks in rounds) for i in range(2)
                ],
            }
        )
        row = summary[-1]
        print(
            f"{name:12s} pool {row['negative_pool']:2d}, {row['unet_calls_per_rank']:3d} UNet calls/rank: {row['seconds_per_step']:.2f} s/step, "
            f"peak RSS {row['peak_rss_mib_per_rank']} MiB, step memory {row['step_memory_mib_per_rank']} MiB"
        )
    out = HERE / "results" / "negatives.json"
    out.write_text(
        json.dumps(
            {"ranks": 2, "batch_per_rank": BATCH, "rounds": ROUNDS, "steps": STEPS, "summary": summary, "runs": runs},
            indent=2,
        )
    )
    print(f"written: {out}")


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--rank":
        rank_run(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    else:
        main()
