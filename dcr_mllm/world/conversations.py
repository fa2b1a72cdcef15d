"""Stage two in the world: LLaVA conversations about the scenes, and the questions that score it.

Pretraining records caption a scene (every attribute named, ``detailed_caption``), as LCS-558K's
captions do; instruction records ask about the attributes in LLaVA-1.5's short-answer formats: an
open question answered with one word (as its VQA data), yes/no and multiple choice
(``world_question``), in two sets: three questions of any kind per image (``finetune.json``, the long
schedule's) and every attribute asked open (``finetune_open.json``, the default's); the evaluation set (``world_qa_rows``,
the ``world_local`` lmms-eval task) asks the same kinds of question about images from another seed,
every attribute in every kind about each image, so each attribute's and each kind's accuracy is
measured on its own, on enough questions to compare two models (``evaluation.analysis.significance``).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from dcr_mllm.errors import DcrError
from dcr_mllm.io import generated_dir
from dcr_mllm.progress import progress
from dcr_mllm.prompts import CHOICE_PROMPT, SHORT_ANSWER_PROMPT
from dcr_mllm.world.scenes import (
    IMAGE_SIZE,
    NUMBER_WORDS,
    TRAINING_SEEDS,
    VERSION,
    WORLD_VALUES,
    WorldScene,
    detailed_caption,
    render,
    sample_scenes,
)

CAPTION_PROMPT = "Render a clear and concise summary of the photo.\n<image>"  # one of LCS-558K's prompts
KINDS = ("open", "yes_no", "choice")
#: ``attribute -> (yes/no question about a value, multiple-choice question)``
_QUESTIONS = {
    "shape": ("Is there a {value} in the image?", "Which shape is in the image?"),
    "color": ("Are the shapes {value}?", "What colour are the shapes?"),
    "count": ("Is the number of shapes {value}?", "How many shapes are there?"),
    "position": ("Are the shapes on the {value}?", "Where in the image are the shapes?"),
    "orientation": ("Are the shapes facing {value}?", "Which way do the shapes face?"),
    "size": ("Are the shapes {value}?", "How big are the shapes?"),
    "background": ("Is the background {value}?", "What colour is the background?"),
}


def world_question(scene: WorldScene, attribute: str, kind: str, rng: random.Random, truth: bool | None = None) -> dict:
    """One question about ``attribute``: ``{"question", "answer", "options"}``. A yes/no question
    names the true value or another one; a choice question offers the true value and one other;
    an open one wants the value. ``truth`` says whether the yes/no question names the true value
    and whether the true value is option A (None: a fair coin from ``rng``), so a question set can
    balance its answers exactly."""
    true = _word(getattr(scene, attribute))
    other = _word(rng.choice([v for v in WORLD_VALUES[attribute] if v != getattr(scene, attribute)]))
    yes_no, choice = _QUESTIONS[attribute]
    if kind == "open":
        return {"question": choice + SHORT_ANSWER_PROMPT, "answer": true.capitalize(), "options": []}
    truth = rng.random() < 0.5 if truth is None else truth
    if kind == "yes_no":
        return {
            "question": yes_no.format(value=true if truth else other) + SHORT_ANSWER_PROMPT,
            "answer": "Yes" if truth else "No",
            "options": [],
        }
    options = [true, other] if truth else [other, true]
    lines = "\n".join(f"{letter}. {option}" for letter, option in zip("AB", options))
    return {"question": f"{choice}\n{lines}{CHOICE_PROMPT}", "answer": "AB"[options.index(true)], "options": options}


def _word(value) -> str:
    """A value as the questions say it (counts as words: "two", not "2")."""
    return NUMBER_WORDS[value] if isinstance(value, int) else value


def _instruction_turns(scene: WorldScene, rng: random.Random, turns: int, kinds: tuple[str, ...] = KINDS) -> list[dict]:
    """``turns`` questions about distinct attributes in a random order, each of one of ``kinds``
    (drawn per question when there is more than one)."""
    conversation = []
    for i, attribute in enumerate(rng.sample(list(WORLD_VALUES), turns)):
        qa = world_question(scene, attribute, rng.choice(kinds) if len(kinds) > 1 else kinds[0], rng)
        conversation.append({"from": "human", "value": ("<image>\n" if i == 0 else "") + qa["question"]})
        conversation.append({"from": "gpt", "value": qa["answer"]})
    return conversation


def write_world_conversations(
    out_dir: str | Path, count: int, seed: int, turns: int = 3, size: int = IMAGE_SIZE
) -> Path:
    """``images/``, ``pretrain.json`` (captions), ``finetune.json`` (attribute questions of every
    kind, ``turns`` per image) and ``finetune_open.json`` (every attribute asked open, the default
    schedule's set: it learns in 1000 steps what the mixed set needs 3000 for) for ``count`` scenes
    of the training seed ``seed``. Complete or absent; a folder generated from other arguments is
    generated anew (``generated_dir``)."""
    if seed not in TRAINING_SEEDS:
        raise DcrError(
            f"seed {seed}: training conversations use a training seed ({TRAINING_SEEDS.start}-{TRAINING_SEEDS.stop - 1})"
        )
    recipe = {
        "generator": "world-conversations",
        "version": VERSION,
        "count": count,
        "seed": seed,
        "turns": turns,
        "size": size,
        "sets": ["finetune", "finetune_open"],
    }
    return generated_dir(out_dir, recipe, lambda tmp: _write_conversations(tmp, count, seed, turns, size))


def _write_conversations(tmp: Path, count: int, seed: int, turns: int, size: int) -> None:
    rng, open_rng = random.Random(seed), random.Random(f"open-{seed}")
    pretrain, finetune, finetune_open = [], [], []
    (tmp / "images").mkdir()
    with progress(count, f"world conversations ({count} images)") as bar:
        for index, scene in enumerate(sample_scenes(count, seed)):
            name = f"{index:06d}.png"
            render(scene, size).save(tmp / "images" / name, format="PNG")
            pretrain.append(
                {
                    "id": f"p{index}",
                    "image": name,
                    "conversations": [
                        {"from": "human", "value": CAPTION_PROMPT},
                        {"from": "gpt", "value": detailed_caption(scene)},
                    ],
                }
            )
            finetune.append({"id": f"f{index}", "image": name, "conversations": _instruction_turns(scene, rng, turns)})
            finetune_open.append(
                {
                    "id": f"o{index}",
                    "image": name,
                    "conversations": _instruction_turns(scene, open_rng, len(WORLD_VALUES), ("open",)),
                }
            )
            bar.update(1)
    (tmp / "pretrain.json").write_text(json.dumps(pretrain, indent=1), encoding="utf-8")
    (tmp / "finetune.json").write_text(json.dumps(finetune, indent=1), encoding="utf-8")
    (tmp / "finetune_open.json").write_text(json.dumps(finetune_open, indent=1), encoding="utf-8")


def world_qa_rows(count: int, seed: int, size: int = IMAGE_SIZE, kinds: tuple[str, ...] = KINDS) -> list[dict]:
    """The ``world_local`` task's rows: each of ``count`` scenes asked about every attribute (the
    class and every fine attribute) in every kind of question, so each attribute and kind is
    measured on ``count`` images and two models are compared on the same questions. Within each
    attribute and kind, half the yes/no answers are "Yes" and half the choice answers "A"
    (alternating by image), so a model that always gives one answer scores chance exactly.

    Args:
        count: scenes asked about.
        seed: seeds the scenes and questions; not one of ``TRAINING_SEEDS``.
        size: side of each square image in pixels.
        kinds: the kinds of question asked: open, yes_no, choice.
    """
    if seed in TRAINING_SEEDS:
        raise DcrError(f"seed {seed} draws training images; evaluate on another seed")
    unknown = set(kinds) - set(KINDS)
    if unknown or not kinds:
        raise DcrError(f"question kinds {sorted(unknown) or '(none)'}: choose from {', '.join(KINDS)}")
    rng = random.Random(f"world-qa-{seed}")
    rows = []
    for index, scene in enumerate(sample_scenes(count, seed)):
        image = render(scene, size)
        for attribute in WORLD_VALUES:
            for kind in kinds:
                qa = world_question(scene, attribute, kind, rng, truth=index % 2 == 0)
                rows.append(
                    {
                        "question_id": f"{index:05d}-{attribute}-{kind}",
                        "attribute": attribute,
                        "kind": kind,
                        "question": qa["question"],
                        "answer": qa["answer"],
                        "options": json.dumps(qa["options"]),
                        "image": image,
                    }
                )
    return rows
