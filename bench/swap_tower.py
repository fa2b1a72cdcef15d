"""Benchmark ``dcr-mllm swap-tower`` on a synthetic multi-GB llava-hf checkpoint: time against ``cp -r``, peak memory.

Builds, under a temporary directory in /tmp, a float16 llava-hf checkpoint of about 2.5 GB in
5 shards with LLaVA-1.5's layout (a CLIP ViT-L/14-336 vision tower, a 2048-wide 16-layer Llama,
a 32064-token vocabulary; random values) and a float32 CLIP ViT-L/14-336 tower directory. Then it
times ``cp -r`` of the checkpoint directory and the swap (a child process, verification included),
twice each, interleaved, and reads each child's peak RSS from the kernel (``wait4``). The start-up
cost of Python + torch + transformers is measured on its own, because on a small machine it is
most of the swap's time. Prints the figures, writes ``bench/results/swap_tower.json`` and deletes
everything it wrote under /tmp.

The building happens in a child process: a child's peak RSS starts from its parent's at exec
time, so the measuring parent must stay small (it imports no torch).

Run: ``.venv/bin/python bench/swap_tower.py`` (``--text-layers 64`` for a ~7.4 GB checkpoint, to see
the start-up cost amortised; results then go to ``bench/results/swap_tower_64_layers.json``)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "swap_tower.json"
SHARD_BYTES = 600_000_000
TEXT = {"vocab_size": 32064, "hidden_size": 2048, "intermediate_size": 5504, "num_attention_heads": 16,
        "num_key_value_heads": 16, "max_position_embeddings": 4096}
TEXT_LAYERS = 16
ROUNDS = 2


def hub_key(in_memory_key: str) -> str:
    """transformers 5's in-memory Llava names -> the llava-hf hub layout (``vision_tower.vision_model.*``)."""
    for old, new in (("model.language_model.", "language_model.model."), ("lm_head.", "language_model.lm_head."),
                     ("model.vision_tower.", "vision_tower.vision_model."), ("model.multi_modal_projector.", "multi_modal_projector.")):
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

    config = LlavaConfig(text_config=LlamaConfig(**TEXT, num_hidden_layers=text_layers), image_token_index=32000, image_seq_length=576)
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
        save_file({k: random_tensor(shapes[k], torch.float16, generator) for k in keys}, out / name, metadata={"format": "pt"})
        weight_map |= dict.fromkeys(keys, name)
        largest = max(largest, (out / name).stat().st_size)
        total += (out / name).stat().st_size
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
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
    config = CLIPVisionConfig(**{k: getattr(vision, k) for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                                                  "num_attention_heads", "image_size", "patch_size")})
    with torch.device("meta"):
        shapes = {f"vision_model.{k}": tuple(v.shape) for k, v in CLIPVisionModel(config).state_dict().items()}
    out.mkdir(parents=True)
    generator = torch.Generator().manual_seed(1)
    save_file({k: random_tensor(s, torch.float32, generator) for k, s in shapes.items()}, out / "model.safetensors", metadata={"format": "pt"})
    config.save_pretrained(out)
    CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
                       image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5]).save_pretrained(out)
    return (out / "model.safetensors").stat().st_size


def timed_child(command: list[str]) -> tuple[float, int, str]:
    """Run a command; returns its wall time, its own peak RSS in bytes (Linux reports KiB) and its output."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = process.stdout.read().decode()
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{output}")
    return elapsed, usage.ru_maxrss * 1024, output


def build(work: Path, text_layers: int) -> None:
    """Child process: write the checkpoint and the tower, print their sizes as JSON."""
    total, largest = build_checkpoint(work / "llava-hf", text_layers)
    print(json.dumps({"total": total, "largest": largest, "tower": build_tower(work / "tower")}))


def main(text_layers: int) -> None:
    needed = 4 * (0.9e9 + 0.1e9 * text_layers)  # checkpoint, swap output, cp copy, tower; with room to spare
    free = shutil.disk_usage(tempfile.gettempdir()).free
    if free < needed:
        raise SystemExit(f"need about {needed / 1e9:.0f} GB free under {tempfile.gettempdir()}; {free / 1e9:.1f} GB free")
    work = Path(tempfile.mkdtemp(prefix="dcr_bench_swap_"))
    try:
        print(f"building the synthetic checkpoint and tower under {work} ...", flush=True)
        sizes = json.loads(timed_child([sys.executable, __file__, "--build", str(work), "--text-layers", str(text_layers)])[2].strip().splitlines()[-1])
        src, tower, dst, copy = work / "llava-hf", work / "tower", work / "swapped", work / "copied"
        total, largest, tower_bytes = sizes["total"], sizes["largest"], sizes["tower"]
        shards = len(list(src.glob("*.safetensors")))
        swap = [sys.executable, "-m", "dcr_mllm.cli", "swap-tower", "--llava", str(src), "--tower", str(tower), "--output", str(dst)]
        startup = [sys.executable, "-c", "import dcr_mllm.cli, dcr_mllm.llava.swap; from transformers import LlavaForConditionalGeneration"]
        startup_seconds, startup_rss, _ = timed_child(startup)
        cp_times, swap_times, swap_rss = [], [], []
        for _ in range(ROUNDS):
            shutil.rmtree(copy, ignore_errors=True)
            shutil.rmtree(dst, ignore_errors=True)
            cp_times.append(timed_child(["cp", "-r", str(src), str(copy)])[0])
            seconds, rss, summary = timed_child(swap)
            swap_times.append(seconds)
            swap_rss.append(rss)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    best_cp, best_swap, peak = min(cp_times), min(swap_times), max(swap_rss)
    limit = 1.5 * largest + tower_bytes
    result = {
        "checkpoint_bytes": total,
        "shards": shards,
        "largest_shard_bytes": largest,
        "tower_bytes": tower_bytes,
        "cp_r_seconds": cp_times,
        "swap_seconds": swap_times,
        "startup_seconds": startup_seconds,
        "swap_over_cp": best_swap / best_cp,
        "swap_without_startup_over_cp": (best_swap - startup_seconds) / best_cp,
        "swap_peak_rss_bytes": peak,
        "startup_rss_bytes": startup_rss,
        "rss_limit_bytes": limit,
        "time_within_2x_cp": best_swap <= 2 * best_cp,
        "rss_under_limit": peak < limit,
        "cpu_count": os.cpu_count(),
        "swap_summary": summary.strip().splitlines(),
    }
    gb = 1e9
    print(summary.strip())
    print(f"checkpoint   {total / gb:.2f} GB float16 in {shards} shards (largest {largest / gb:.2f} GB); tower {tower_bytes / gb:.2f} GB float32")
    print(f"cp -r        {', '.join(f'{t:.2f}' for t in cp_times)} s")
    print(f"swap-tower   {', '.join(f'{t:.2f}' for t in swap_times)} s, verification included: {result['swap_over_cp']:.1f}x cp -r "
          f"(target 2x); {result['swap_without_startup_over_cp']:.1f}x without the {startup_seconds:.1f} s start-up")
    print(f"peak RSS     {peak / gb:.2f} GB (start-up alone {startup_rss / gb:.2f} GB); target < 1.5 x largest shard + tower = {limit / gb:.2f} GB")
    results = RESULTS if text_layers == TEXT_LAYERS else RESULTS.with_name(f"swap_tower_{text_layers}_layers.json")
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {results}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="swap-tower against cp -r on a synthetic llava-hf checkpoint")
    parser.add_argument("--text-layers", type=int, default=TEXT_LAYERS, help="Llama layers (about 0.1 GB each)")
    parser.add_argument("--build", metavar="DIR", help=argparse.SUPPRESS)  # the child that writes the inputs
    args = parser.parse_args()
    if args.build:
        build(Path(args.build), args.text_layers)
    else:
        main(args.text_layers)
