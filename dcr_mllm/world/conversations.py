"""Stage two in the world: LLaVA conversations about the scenes, and the questions that score it.

Pretraining records caption a scene (every attribute named, ``detailed_caption``), as LCS-558K's
captions do; instruction records ask about one attribute at a time in LLaVA-1.5's short-answer
formats: an open question answered with one word (as its VQA data), yes/no and multiple choice
(``world_question``); the evaluation set (``world_qa_rows``,
the ``world_local`` lmms-eval task) asks the same kinds of question about images from another seed,
one question per image and attribute (the kinds in turn), so each attribute's accuracy is measured
on its own, and each kind's.
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


def world_question(scene: WorldScene, attribute: str, kind: str, rng: random.Random) -> dict:
    """One question about ``attribute``: ``{"question", "answer", "options"}``. A yes/no question
    names the true value or another one with equal odds; a choice question offers the true value
    and one other, in random order (answers A and B equally often); an open one wants the value."""
    true = _word(getattr(scene, attribute))
    other = _word(rng.choice([v for v in WORLD_VALUES[attribute] if v != getattr(scene, attribute)]))
    yes_no, choice = _QUESTIONS[attribute]
    if kind == "open":
        return {"question": choice + SHORT_ANSWER_PROMPT, "answer": true.capitalize(), "options": []}
    if kind == "yes_no":
        asked = true if rng.random() < 0.5 else other
        return {"question": yes_no.format(value=asked) + SHORT_ANSWER_PROMPT, "answer": "Yes" if asked == true else "No", "options": []}
    options = [true, other] if rng.random() < 0.5 else [other, true]
    lines = "\n".join(f"{letter}. {option}" for letter, option in zip("AB", options))
    return {"question": f"{choice}\n{lines}{CHOICE_PROMPT}", "answer": "AB"[options.index(true)], "options": options}


def _word(value) -> str:
    """A value as the questions say it (counts as words: "two", not "2")."""
    return NUMBER_WORDS[value] if isinstance(value, int) else value


def _instruction_turns(scene: WorldScene, rng: random.Random, turns: int) -> list[dict]:
    """``turns`` questions about distinct attributes, each open, yes/no or multiple choice."""
    conversation = []
    for i, attribute in enumerate(rng.sample(list(WORLD_VALUES), turns)):
        qa = world_question(scene, attribute, rng.choice(KINDS), rng)
        conversation.append({"from": "human", "value": ("<image>\n" if i == 0 else "") + qa["question"]})
        conversation.append({"from": "gpt", "value": qa["answer"]})
    return conversation


def write_world_conversations(out_dir: str | Path, count: int, seed: int, turns: int = 3, size: int = IMAGE_SIZE) -> Path:
    """``images/``, ``pretrain.json`` (captions) and ``finetune.json`` (attribute questions, ``turns``
    per image) for ``count`` scenes of the training seed ``seed``. Complete or absent; a folder
    generated from other arguments is generated anew (``generated_dir``)."""
    if seed not in TRAINING_SEEDS:
        raise DcrError(f"seed {seed}: training conversations use a training seed ({TRAINING_SEEDS.start}-{TRAINING_SEEDS.stop - 1})")
    recipe = {"generator": "world-conversations", "version": VERSION, "count": count, "seed": seed, "turns": turns, "size": size}
    return generated_dir(out_dir, recipe, lambda tmp: _write_conversations(tmp, count, seed, turns, size))


def _write_conversations(tmp: Path, count: int, seed: int, turns: int, size: int) -> None:
    rng = random.Random(seed)
    pretrain, finetune = [], []
    (tmp / "images").mkdir()
    with progress(count, f"world conversations ({count} images)") as bar:
        for index, scene in enumerate(sample_scenes(count, seed)):
            name = f"{index:06d}.png"
            render(scene, size).save(tmp / "images" / name, format="PNG")
            pretrain.append({"id": f"p{index}", "image": name, "conversations": [
                {"from": "human", "value": CAPTION_PROMPT}, {"from": "gpt", "value": detailed_caption(scene)}]})
            finetune.append({"id": f"f{index}", "image": name, "conversations": _instruction_turns(scene, rng, turns)})
            bar.update(1)
    (tmp / "pretrain.json").write_text(json.dumps(pretrain, indent=1), encoding="utf-8")
    (tmp / "finetune.json").write_text(json.dumps(finetune, indent=1), encoding="utf-8")


def world_qa_rows(count: int, seed: int, size: int = IMAGE_SIZE) -> list[dict]:
    """The ``world_local`` task's rows: for each of ``count`` scenes one question per attribute
    (the class and every fine attribute), the kinds in turn."""
    if seed in TRAINING_SEEDS:
        raise DcrError(f"seed {seed} draws training images; evaluate on another seed")
    rng = random.Random(f"world-qa-{seed}")
    rows = []
    for index, scene in enumerate(sample_scenes(count, seed)):
        image = render(scene, size)
        for number, attribute in enumerate(WORLD_VALUES):
            kind = KINDS[(index + number) % len(KINDS)]
            qa = world_question(scene, attribute, kind, rng)
            rows.append({"question_id": f"{index:05d}-{attribute}", "attribute": attribute, "kind": kind, "question": qa["question"],
                         "answer": qa["answer"], "options": json.dumps(qa["options"]), "image": image})
    return rows
