"""Synthetic LLaVA data for the tiny pipeline and tests: the project's procedural scenes with
captions (pretraining records, like LCS-558K) and questions about their attributes
(instruction records, like the 665K mix: multi-turn, short answers, yes/no and multiple-choice
questions in the prompt formats the evaluation tasks use, and some text-only turns)."""

from __future__ import annotations

import json
import random
from pathlib import Path

from dcr_mllm.data.synthetic import caption, render_scene, sample_attributes
from dcr_mllm.io import generated_dir
from dcr_mllm.prompts import CHOICE_PROMPT, SHORT_ANSWER_PROMPT

VERSION = 1  # raise when the generated conversations change

NUMBERS = {1: "One.", 2: "Two.", 3: "Three.", 4: "Four."}
TEXT_ONLY = [
    ("What is two plus three?", "Five."),
    ("Name a primary colour.", "Red."),
    ("How many sides does a square have?", "Four."),
    ("Which direction is opposite to left?", "Right."),
]


def _questions(attrs, rng: random.Random) -> list[dict]:
    asked_color = attrs.color if rng.random() < 0.5 else rng.choice(["red", "green", "blue", "yellow"])
    other_way = rng.choice([d for d in ("up", "down", "left", "right") if d != attrs.orientation])
    options = [attrs.orientation, other_way] if rng.random() < 0.5 else [other_way, attrs.orientation]
    qa = [
        ("What colour are the shapes?", attrs.color.capitalize() + "."),
        ("How many shapes are there?", NUMBERS[attrs.count]),
        ("Which way do the shapes point?", attrs.orientation.capitalize() + "."),
        (
            f"Is there a {asked_color} {attrs.shape} in the image?{SHORT_ANSWER_PROMPT}",
            "Yes" if asked_color == attrs.color else "No",
        ),
        (
            f"Which way do the shapes point?\nA. {options[0]}\nB. {options[1]}{CHOICE_PROMPT}",
            "A" if options[0] == attrs.orientation else "B",
        ),
    ]
    rng.shuffle(qa)
    turns = []
    for i, (question, answer) in enumerate(qa[: rng.randint(1, 3)]):
        turns.append({"from": "human", "value": ("<image>\n" if i == 0 else "") + question})
        turns.append({"from": "gpt", "value": answer})
    return turns


def write_synthetic_conversations(
    out_dir: str | Path, num_images: int = 64, image_size: int = 48, seed: int = 0
) -> dict[str, Path]:
    """Write images/ plus pretrain.json and finetune.json; returns their paths. A folder generated
    from the same arguments is reused; any other is generated anew (``generated_dir``)."""
    out_dir = Path(out_dir)
    recipe = {
        "generator": "llava-synthetic-conversations",
        "version": VERSION,
        "count": num_images,
        "image_size": image_size,
        "seed": seed,
    }
    generated_dir(out_dir, recipe, lambda tmp: _write_conversations(tmp, num_images, image_size, seed))
    return {"images": out_dir / "images", "pretrain": out_dir / "pretrain.json", "finetune": out_dir / "finetune.json"}


def _write_conversations(out_dir: Path, num_images: int, image_size: int, seed: int) -> None:
    rng = random.Random(seed)
    (out_dir / "images").mkdir()
    pretrain, finetune = [], []
    for index in range(num_images):
        attrs = sample_attributes(rng)
        name = f"{index:06d}.png"
        render_scene(attrs, image_size).save(out_dir / "images" / name)
        pretrain.append(
            {
                "id": f"p{index}",
                "image": name,
                "conversations": [
                    {"from": "human", "value": "Render a clear and concise summary of the photo.\n<image>"},
                    {"from": "gpt", "value": caption(attrs)},
                ],
            }
        )
        finetune.append({"id": f"f{index}", "image": name, "conversations": _questions(attrs, rng)})
    for index in range(max(1, num_images // 8)):  # text-only records, as in the 665K mix
        question, answer = TEXT_ONLY[index % len(TEXT_ONLY)]
        finetune.append(
            {
                "id": f"t{index}",
                "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}],
            }
        )
    for key, records in (("pretrain", pretrain), ("finetune", finetune)):
        (out_dir / f"{key}.json").write_text(json.dumps(records, indent=1))
