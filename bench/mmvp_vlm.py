"""Benchmark the batched MMVP-VLM evaluator against a per-pair transcription of the official script.

Writes a synthetic 270-statement MMVP-VLM directory (224 px JPEGs) under a temporary directory,
then scores one tower with ``evaluate_mmvp_vlm`` (each image and text encoded once, in batches)
and with ``per_pair_reference`` (the official ``evaluate_vlm.py`` loop: per pair, one call per
statement with both images), ``--rounds`` times each, interleaved. Both decode the JPEGs and use
the tower's own processor and tokenizer. Checks that both give the same per-category scores,
prints the figures and writes ``bench/results/mmvp_vlm.json``.

Run: ``.venv/bin/python bench/mmvp_vlm.py`` (tiny-clip on CPU, one thread: tiny models on a
shared CPU spend most of their time in OpenMP synchronisation otherwise; ``--threads`` changes it;
``--tower DIR --device cuda`` measures a real tower).
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from dcr_mllm.evaluation.tower import CATEGORIES, evaluate_mmvp_vlm, write_mmvp_vlm
from dcr_mllm.towers import load_tower

RESULTS = Path(__file__).parent / "results" / "mmvp_vlm.json"


def per_pair_reference(tower, benchmark_dir: Path) -> dict[str, float]:
    """The official loop, transcribed: per pair, both images and one statement per forward call."""
    pair_accuracies = dict.fromkeys(CATEGORIES, 0)
    num_pairs = 0
    with open(benchmark_dir / "Questions.csv", newline="") as f:
        reader = csv.reader(f)
        next(reader)
        for qid1, qtype1, statement1 in reader:
            qid2, _, statement2 = next(reader)
            qid1, qid2 = int(qid1), int(qid2)
            images = [
                Image.open(benchmark_dir / "MLLM_VLM Images" / qtype1 / f"{qid}.jpg").convert("RGB")
                for qid in (qid1, qid2)
            ]
            pixels = tower.preprocess(images).to(tower.mean.device)
            preds = []
            for statement in (statement1, statement2):
                with torch.no_grad():
                    image_features = F.normalize(tower.global_embedding(pixels).float(), dim=-1)
                    text_features = F.normalize(tower.encode_text(["a photo of " + statement]).float(), dim=-1)
                    logits_per_text = text_features @ image_features.T * tower.logit_scale() + tower.logit_bias()
                    probs = logits_per_text.softmax(dim=-1)
                preds.append("img1" if probs[0, 0].item() > 0.5 else "img2")
            gt = ["img1" if qid % 2 == 1 else "img2" for qid in (qid1, qid2)]
            if preds == gt:
                pair_accuracies[CATEGORIES[num_pairs // 15]] += 1
            num_pairs += 1
    return {c: n / (num_pairs // len(CATEGORIES)) * 100 for c, n in pair_accuracies.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tower", default="tiny-clip", help="tower directory or preset name")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    tower = load_tower(args.tower).to(args.device).eval()
    with tempfile.TemporaryDirectory() as tmp:
        data = write_mmvp_vlm(Path(tmp) / "MMVP_VLM", image_size=224, seed=0)
        evaluate_mmvp_vlm(tower, data, args.batch_size)  # warm-up: processor, tokenizer, allocator
        batched, per_pair = [], []
        for _ in range(args.rounds):
            start = time.perf_counter()
            result = evaluate_mmvp_vlm(tower, data, args.batch_size)
            batched.append(time.perf_counter() - start)
            start = time.perf_counter()
            reference = per_pair_reference(tower, data)
            per_pair.append(time.perf_counter() - start)
    same = all(abs(result.scores[c] - reference[c]) < 1e-9 for c in CATEGORIES)
    figures = {
        "tower": args.tower,
        "device": args.device,
        "threads": args.threads,
        "statements": 270,
        "batch_size": args.batch_size,
        "rounds": args.rounds,
        "batched_s": round(statistics.median(batched), 3),
        "per_pair_s": round(statistics.median(per_pair), 3),
        "speedup": round(statistics.median(per_pair) / statistics.median(batched), 2),
        "same_scores": same,
        "average": round(result.scores["average"], 2),
    }
    for key, value in figures.items():
        print(f"{key:>12}: {value}")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(figures, indent=2) + "\n")
    if not same:
        raise SystemExit("the batched evaluator and the per-pair reference disagree")


if __name__ == "__main__":
    main()
