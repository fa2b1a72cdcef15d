"""Benchmark ZeRO-3 model construction: each rank's peak memory with a 0.8 B Llama.

Runs ``dcr-mllm llava-pretrain`` (tiny CLIP tower, a couple of steps, ``zero_stage=3``,
``precision=bf16``) on two CPU ranks (torchrun, gloo) twice: with a random-init Llama of about
0.8 B parameters and with the tiny Llama. While each run lasts, the parent samples every rank's
``RssAnon`` (/proc/PID/status: anonymous memory, so neither the weight files' page cache nor
shared libraries count) every 0.1 s and keeps each rank's peak. The figure is the largest rank's
peak with the 0.8 B Llama minus the largest rank's peak with the tiny one; ZeRO-3 built the whole
model in float32 on every rank before, so it must now stay below 0.6 x the model's float32 size.

The ranks run with ``stages/deepspeed/zero3.json``'s settings and the cache of gathered parameters
scaled to the model (see ``DEEPSPEED``); on CPU the training engine fixes glibc's mmap threshold at
128 KiB itself (``dcr_mllm.training.distributed``). ``--code DIR`` measures another copy of the
package the same way (an export of an earlier commit: the figures before a change). ``--zero2``
also runs the 0.8 B Llama under ZeRO-2, where every rank holds the whole model.

The 0.8 B Llama (hidden 2048, 16 layers, the tiny Llama's tokenizer) is built once in a child
process, uninitialised in bf16, filled tensor by tensor, saved as bf16 safetensors with
``save_pretrained``, and cached under the work directory. The parent imports no torch, so the
figures are the ranks' own.

Run: ``.venv/bin/python bench/zero3_memory.py`` (about 3 minutes on 2 CPU cores, 1 more the first time), writes
``bench/results/zero3_memory.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results" / "zero3_memory.json"
LLAMA = {
    "hidden_size": 2048,
    "intermediate_size": 5504,
    "num_hidden_layers": 16,
    "num_attention_heads": 16,
    "num_key_value_heads": 16,
    "max_position_embeddings": 512,
    "tie_word_embeddings": False,
}
LIMIT = 0.6  # of the model's float32 size
#: stages/deepspeed/zero3.json, with the gathered-parameter cache scaled to the model: DeepSpeed keeps
#: up to stage3_max_live_parameters (default 1e9, a seventh of a 7B model) gathered between uses,
#: which would be the whole of a 0.8 B one
DEEPSPEED = {
    "zero_optimization": {
        "stage": 3,
        "stage3_prefetch_bucket_size": 50_000_000,
        "stage3_param_persistence_threshold": 100_000,
        "stage3_max_live_parameters": 100_000_000,
        "stage3_max_reuse_distance": 100_000_000,
    }
}


def build_llama(out: Path) -> None:
    """The 0.8 B Llama, never materialised twice: allocated once in bf16, initialised in place."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from dcr_mllm.presets.real import local_path
    from dcr_mllm.training.zero import empty_init

    tokenizer = AutoTokenizer.from_pretrained(local_path("tiny-llama"))
    config = LlamaConfig(
        vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **LLAMA
    )
    with empty_init(torch.bfloat16):
        model = LlamaForCausalLM(config)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            else:
                param.normal_(0.0, 0.02, generator=generator)
    model.save_pretrained(out, max_shard_size="500MB")
    tokenizer.save_pretrained(out)
    (out / "COMPLETE").write_text(str(model.num_parameters()))


def rank_pids(launcher: int) -> list[int]:
    """The processes torchrun started (its children)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                status = (entry / "status").read_text()
            except OSError:
                continue
            if f"\nPPid:\t{launcher}\n" in status:
                pids.append(int(entry.name))
    return pids


def rss_anon(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def run_pretrain(language_model: str, out: Path, zero_stage: int, deepspeed: Path, code: Path) -> dict:
    """Two ranks of llava-pretrain; each rank's peak RssAnon, sampled every 0.1 s."""
    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "dcr_mllm.cli",
        "llava-pretrain",
        "tower=tiny-clip",
        f"language_model={language_model}",
        f"output_dir={out}",
        "synthetic_images=4",
        "pretrain.micro_batch_size=1",
        "pretrain.epochs=0",
        "pretrain.max_steps=2",
        f"pretrain.zero_stage={zero_stage}",
        "pretrain.precision=bf16",
        "pretrain.num_workers=0",
    ]
    if zero_stage == 3:
        command.append(f"pretrain.deepspeed={deepspeed}")
    start = time.perf_counter()
    log_path = out.parent / (out.name + ".log")
    with open(log_path, "w") as log:
        launcher = subprocess.Popen(command, cwd=code, env=env, stdout=log, stderr=subprocess.STDOUT)
        peaks: dict[int, int] = {}
        while launcher.poll() is None:
            for pid in rank_pids(launcher.pid):
                value = rss_anon(pid)
                if value is not None:
                    peaks[pid] = max(peaks.get(pid, 0), value)
            time.sleep(0.1)
    if launcher.returncode != 0:
        raise SystemExit(f"llava-pretrain failed; see {log_path}")
    state = json.loads((out / "pretrain" / "train_state.json").read_text())
    return {
        "peak_rss_anon_bytes": sorted(peaks.values(), reverse=True),
        "seconds": time.perf_counter() - start,
        "steps": state["step"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--work-dir", default="/tmp/dcr_bench_zero3", help="where the 0.8 B Llama is cached and the runs write"
    )
    parser.add_argument(
        "--zero2", action="store_true", help="also run the 0.8 B Llama under ZeRO-2 (whole model on every rank)"
    )
    parser.add_argument(
        "--code",
        metavar="DIR",
        help="run the ranks with the dcr_mllm package in DIR (an export of an "
        "earlier commit, to measure it the same way); the figures then go to zero3_memory_before.json",
    )
    parser.add_argument("--build", metavar="DIR", help=argparse.SUPPRESS)  # the child that writes the Llama
    args = parser.parse_args()
    if args.build:
        build_llama(Path(args.build))
        return
    work = Path(args.work_dir)
    llama = work / "llama-0.8b"
    if not (llama / "COMPLETE").is_file():
        print(f"building the 0.8 B Llama under {llama} ...", flush=True)
        shutil.rmtree(llama, ignore_errors=True)
        subprocess.run([sys.executable, __file__, "--build", str(llama)], check=True, cwd=REPO)
    params = int((llama / "COMPLETE").read_text())
    deepspeed = work / "zero3.json"
    deepspeed.write_text(json.dumps(DEEPSPEED))
    code = Path(args.code).resolve() if args.code else REPO  # `-m dcr_mllm.cli` imports the package from there
    fp32 = 4 * params
    runs = {}
    for name, model, stage in [("tiny", "tiny-llama", 3), ("0.8b", str(llama), 3)] + (
        [("0.8b_zero2", str(llama), 2)] if args.zero2 else []
    ):
        print(f"llava-pretrain, {name} Llama, ZeRO-{stage}, 2 ranks ...", flush=True)
        runs[name] = run_pretrain(model, work / f"run_{name}", stage, deepspeed, code)
        print(
            f"  peak RssAnon per rank: {[round(b / 1e9, 2) for b in runs[name]['peak_rss_anon_bytes']]} GB, {runs[name]['seconds']:.0f} s",
            flush=True,
        )
    baseline = runs["tiny"]["peak_rss_anon_bytes"][0]
    above = runs["0.8b"]["peak_rss_anon_bytes"][0] - baseline
    result = {
        "llama_parameters": params,
        "llama_fp32_bytes": fp32,
        "limit_bytes": int(LIMIT * fp32),
        "zero3_peak_above_tiny_bytes": above,
        "zero3_ratio_of_fp32": above / fp32,
        "passes": above < LIMIT * fp32,
        "runs": runs,
        "deepspeed": DEEPSPEED,
        "cpu_count": os.cpu_count(),
    }
    if args.zero2:
        result["zero2_peak_above_tiny_bytes"] = runs["0.8b_zero2"]["peak_rss_anon_bytes"][0] - baseline
    print(
        f"0.8 B Llama ({params / 1e9:.3f} B params, {fp32 / 1e9:.2f} GB in fp32): largest rank's peak RssAnon "
        f"{above / 1e9:.2f} GB above the tiny run = {above / fp32:.2f} x fp32 (limit {LIMIT})"
    )
    if args.zero2:
        print(
            f"ZeRO-2 (whole model on every rank): {result['zero2_peak_above_tiny_bytes'] / 1e9:.2f} GB above the tiny run"
        )
    name = RESULTS.stem + ("_before" if args.code else "")
    RESULTS.with_name(name + ".json").write_text(json.dumps(result, indent=2) + "\n")
    if not result["passes"] and not args.code:
        raise SystemExit("ZeRO-3 construction held more than the limit")


if __name__ == "__main__":
    main()
