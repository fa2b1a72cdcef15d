"""Benchmark ``dcr-mllm swap-tower`` on synthetic multi-GB llava-hf checkpoints: time against ``cp -r``, peak memory.

For each size, builds under a temporary directory in /tmp a float16 llava-hf checkpoint with
LLaVA-1.5's layout (a CLIP ViT-L/14-336 vision tower, a 2048-wide Llama, a 32064-token vocabulary;
random values; shards of at most 0.6 GB): 16 Llama layers make 2.5 GB in 5 shards, 64 make 7.4 GB
in 13, 128 make 13.8 GB in 24 (the size of LLaVA-1.5-7B). The tower is a float32 CLIP ViT-L/14-336
directory. Then it times ``cp -r`` of the checkpoint
directory and the swap (the CLI in a child process, verification included), ROUNDS times each,
interleaved, each output deleted before the next command, so both start from the same page cache
(SRC cached, nothing else); it reports medians and reads each child's peak RSS and CPU time from
the kernel (``wait4``). The imports alone (Python + torch + transformers' Llava) are timed too,
because on a small machine they are most of the swap's time. Prints the figures, writes
``bench/results/swap_tower.json`` and deletes everything it wrote under /tmp.

The building happens in a child process: a child's peak RSS starts from its parent's at exec
time, so the measuring parent must stay small (it imports no torch).

Run: ``.venv/bin/python bench/swap_tower.py`` (all three sizes; ``--text-layers 16`` runs and records one)
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

RESULTS = Path(__file__).parent / "results" / "swap_tower.json"
SHARD_BYTES = 600_000_000
TEXT = {
    "vocab_size": 32064,
    "hidden_size": 2048,
    "intermediate_size": 5504,
    "num_attention_heads": 16,
    "num_key_value_heads": 16,
    "max_position_embeddings": 4096,
}
TEXT_LAYERS = (16, 64, 128)
ROUNDS = 5


def hub_key(in_memory_key: str) -> str:
    """transformers 5's in-memory Llava names -> the llava-hf hub layout (``vision_tower.vision_model.*``)."""
    for old, new in (
        ("model.language_model.", "language_model.model."),
        ("lm_head.", "language_model.lm_head."),
        ("model.vision_tower.", "vision_tower.vision_model."),
        ("model.multi_modal_projector.", "multi_modal_projector."),
    ):
        if in_memory_key.startswith(old):
            return new + in_memory_key.removeprefix(old)
    raise ValueError(in_memory_key)


def random_tensor(shape, dtype, generator):
    import torch

    return torch.randn(shape, generator=generator, dtype=torch.float32).to(dtype)


def build_checkpoint(out: Path, text_layers: int) -> tuple[int, int]:
    """A float16 llava-hf directory in shards of at most SHARD_BYTES; returns (total bytes, largest shard bytes)."""
    import torch
    from safetensors.torch import save_file
    from transformers import (
        CLIPImageProcessor,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
    )

    config = LlavaConfig(
        text_config=LlamaConfig(**TEXT, num_hidden_layers=text_layers), image_token_index=32000, image_seq_length=576
    )
    config.pad_token_id = 32001
    config.dtype = torch.float16
    with torch.device("meta"):
        shapes = {hub_key(k): tuple(v.shape) for k, v in LlavaForConditionalGeneration(config).state_dict().items()}
    out.mkdir(parents=True)
    generator = torch.Generator().manual_seed(0)
    groups, current, size = [], [], 0
    for key, shape in shapes.items():
        nbytes = 2 * torch.Size(shape).numel()
        if current and size + nbytes > SHARD_BYTES:
            groups.append(current)
            current, size = [], 0
        current.append(key)
        size += nbytes
    groups.append(current)
    weight_map, largest, total = {}, 0, 0
    for i, keys in enumerate(groups):
        name = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        save_file(
            {k: random_tensor(shapes[k], torch.float16, generator) for k in keys}, out / name, metadata={"format": "pt"}
        )
        weight_map |= dict.fromkeys(keys, name)
        largest = max(largest, (out / name).stat().st_size)
        total += (out / name).stat().st_size
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map})
    )
    config.save_pretrained(out)
    CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}).save_pretrained(out)
    return total, largest


def build_tower(out: Path) -> int:
    """A float32 CLIP ViT-L/14-336 vision tower directory (vision_model.* keys); returns its weight bytes."""
    import torch
    from safetensors.torch import save_file
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        CLIPVisionModel,
        LlavaConfig,
    )

    vision = LlavaConfig().vision_config
    config = CLIPVisionConfig(
        **{
            k: getattr(vision, k)
            for k in (
                "hidden_size",
                "intermediate_size",
                "num_hidden_layers",
                "num_attention_heads",
                "image_size",
                "patch_size",
            )
        }
    )
    with torch.device("meta"):
        shapes = {f"vision_model.{k}": tuple(v.shape) for k, v in CLIPVisionModel(config).state_dict().items()}
    out.mkdir(parents=True)
    generator = torch.Generator().manual_seed(1)
    save_file(
        {k: random_tensor(s, torch.float32, generator) for k, s in shapes.items()},
        out / "model.safetensors",
        metadata={"format": "pt"},
    )
    config.save_pretrained(out)
    CLIPImageProcessor(
        size={"shortest_edge": 336},
        crop_size={"height": 336, "width": 336},
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    ).save_pretrained(out)
    return (out / "model.safetensors").stat().st_size


def timed_child(command: list[str]) -> dict:
    """Run a command: its wall time, CPU time (user + system), own peak RSS in bytes (Linux reports
    KiB), the load average when it ended (the machine is shared) and its output."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = process.stdout.read().decode()
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"{' '.join(command)} failed:\n{output}")
    return {
        "seconds": elapsed,
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "rss_bytes": usage.ru_maxrss * 1024,
        "load": os.getloadavg()[0],
        "output": output,
    }


def build(work: Path, text_layers: int) -> None:
    """Child process: write the checkpoint and the tower, print their sizes as JSON."""
    total, largest = build_checkpoint(work / "llava-hf", text_layers)
    print(json.dumps({"total": total, "largest": largest, "tower": build_tower(work / "tower")}))


def measure(text_layers: int) -> dict:
    """Build one checkpoint, time cp -r and swap-tower on it (interleaved), delete it; the figures."""
    work = Path(tempfile.mkdtemp(prefix="dcr_bench_swap_"))
    try:
        print(f"building the synthetic checkpoint ({text_layers} Llama layers) and tower under {work} ...", flush=True)
        built = timed_child([sys.executable, __file__, "--build", str(work), "--text-layers", str(text_layers)])
        sizes = json.loads(built["output"].strip().splitlines()[-1])
        src, tower, dst, copy = work / "llava-hf", work / "tower", work / "swapped", work / "copied"
        swap = [
            sys.executable,
            "-m",
            "dcr_mllm.cli",
            "swap-tower",
            "--llava",
            str(src),
            "--tower",
            str(tower),
            "--output",
            str(dst),
        ]
        imports = [
            sys.executable,
            "-c",
            "import dcr_mllm.cli, dcr_mllm.llava.checkpoints.swap; from transformers import LlavaForConditionalGeneration",
        ]
        runs = {"cp": [], "swap": [], "imports": []}
        for _ in range(ROUNDS):
            runs["cp"].append(timed_child(["cp", "-r", str(src), str(copy)]))
            shutil.rmtree(copy)
            runs["swap"].append(timed_child(swap))
            shutil.rmtree(dst)
            runs["imports"].append(timed_child(imports))
        shards = len(list(src.glob("*.safetensors")))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    median = {name: statistics.median(r["seconds"] for r in values) for name, values in runs.items()}
    peak = max(r["rss_bytes"] for r in runs["swap"])
    limit = 1.5 * sizes["largest"] + sizes["tower"]
    return {
        "checkpoint_bytes": sizes["total"],
        "shards": shards,
        "largest_shard_bytes": sizes["largest"],
        "tower_bytes": sizes["tower"],
        "rounds": ROUNDS,
        "cp_r_seconds": [r["seconds"] for r in runs["cp"]],
        "swap_seconds": [r["seconds"] for r in runs["swap"]],
        "imports_seconds": [r["seconds"] for r in runs["imports"]],
        "swap_cpu_seconds": [r["cpu_seconds"] for r in runs["swap"]],
        "load_average": [r["load"] for r in runs["swap"]],
        "cp_r_median_seconds": median["cp"],
        "swap_median_seconds": median["swap"],
        "imports_median_seconds": median["imports"],
        "swap_over_cp": median["swap"] / median["cp"],
        "time_within_2x_cp": median["swap"] <= 2 * median["cp"],
        "swap_peak_rss_bytes": peak,
        "imports_peak_rss_bytes": max(r["rss_bytes"] for r in runs["imports"]),
        "rss_limit_bytes": limit,
        "rss_under_limit": peak < limit,
        "swap_summary": runs["swap"][-1]["output"].strip().splitlines(),
    }


def main(layer_counts: list[int]) -> None:
    needed = 2.2 * (0.9e9 + 0.1e9 * max(layer_counts))  # checkpoint, one output, tower; with room to spare
    free = shutil.disk_usage(tempfile.gettempdir()).free
    if free < needed:
        raise SystemExit(
            f"need about {needed / 1e9:.0f} GB free under {tempfile.gettempdir()}; {free / 1e9:.1f} GB free"
        )
    results = [measure(layers) for layers in layer_counts]
    gb = 1e9
    for result in results:
        print("\n".join(result["swap_summary"]))
        print(
            f"checkpoint   {result['checkpoint_bytes'] / gb:.2f} GB float16 in {result['shards']} shards "
            f"(largest {result['largest_shard_bytes'] / gb:.2f} GB); tower {result['tower_bytes'] / gb:.2f} GB float32"
        )
        print(
            f"cp -r        median {result['cp_r_median_seconds']:.2f} s  ({', '.join(f'{t:.2f}' for t in result['cp_r_seconds'])})"
        )
        print(
            f"swap-tower   median {result['swap_median_seconds']:.2f} s  ({', '.join(f'{t:.2f}' for t in result['swap_seconds'])}), "
            f"verification included: {result['swap_over_cp']:.1f}x cp -r (target 2x); imports alone {result['imports_median_seconds']:.2f} s"
        )
        print(
            f"peak RSS     {result['swap_peak_rss_bytes'] / gb:.2f} GB (imports alone {result['imports_peak_rss_bytes'] / gb:.2f} GB); "
            f"target < 1.5 x largest shard + tower = {result['rss_limit_bytes'] / gb:.2f} GB"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"cpu_count": os.cpu_count(), "runs": results}, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="swap-tower against cp -r on a synthetic llava-hf checkpoint")
    parser.add_argument(
        "--text-layers",
        type=int,
        nargs="+",
        default=list(TEXT_LAYERS),
        help="Llama layers per checkpoint (about 0.1 GB each)",
    )
    parser.add_argument("--build", metavar="DIR", help=argparse.SUPPRESS)  # the child that writes the inputs
    args = parser.parse_args()
    if args.build:
        build(Path(args.build), args.text_layers[0])
    else:
        main(args.text_layers)
