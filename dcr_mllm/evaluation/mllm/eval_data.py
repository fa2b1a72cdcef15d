"""The MLLM benchmarks' local data, which the lmms-eval tasks in ``dcr_mllm/tasks/`` read
(``task_dir()`` is that folder, what ``--include_path`` takes).

Local data lives under one directory, ``$DCR_EVAL_DATA`` (default ``~/.cache/dcr_mllm/eval_data``)::

    mmvp/test.parquet                                   Index, Question, Options, Correct Answer, image
    pope/{adversarial,popular,random}.parquet           question_id, question, answer, category, image
    world/test.parquet                                  question_id, attribute, kind, question, answer, options, image
    cv_bench/test.parquet                               CV-Bench's fields (idx, type, task, source, prompt, ...)
    countbenchqa/test.parquet                           CountBenchQA's fields (question, number, text, image)

``prepare_eval_data`` (``prepare_mmvp``/``prepare_pope``) converts the benchmarks' original files into it, MMVP with the
answer corrections lmms-eval's own MMVP data carries (``MMVP_ANSWER_CORRECTIONS``); the
``synthetic_*`` writers produce small sets in the same schema from the project's scenes.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import random
from pathlib import Path

from dcr_mllm.errors import DcrError
from dcr_mllm.io import GENERATED, atomic_path, write_atomic
from dcr_mllm.strict import loads_json, read_text
from dcr_mllm.world.conversations import world_qa_rows

POPE_SPLITS = ("adversarial", "popular", "random")
WORLD_QA_SEED = 2  # the world's question set: neither a training seed nor the tower evaluation's (1)

# MMVP's answers as lmms-eval 0.7.3 scores them: Questions.csv (MMVP/MMVP) with two pairs swapped.
# lmms-eval applies these in its dataset (lmms-lab-eval/MMVP), not in code; they are listed in
# lmms_eval/tasks/mmvp/utils.py:11-18 (and tasks/mmvp/README.md, "Ground Truth Corrections"):
#   Index 99: (a) -> (b), Index 100: (b) -> (a), Index 279: (a) -> (b), Index 280: (b) -> (a).
MMVP_ANSWER_CORRECTIONS = {99: "(b)", 100: "(a)", 279: "(b)", 280: "(a)"}  # Index -> corrected "Correct Answer"


def task_dir() -> Path:
    """The installed lmms-eval task folder (YAMLs + utils.py), for ``--include_path``."""
    return Path(__file__).resolve().parents[2] / "tasks"


def eval_data_root() -> Path:
    return Path(os.environ.get("DCR_EVAL_DATA") or Path.home() / ".cache" / "dcr_mllm" / "eval_data").expanduser()


def data_file(*parts: str) -> str:
    """Absolute path of a local benchmark file (what the task YAMLs point ``data_files`` at)."""
    return str(eval_data_root().joinpath(*parts))


def write_eval_data(outputs: dict[Path, list[dict]]) -> list[Path]:
    """Write each parquet file (an ``image`` given as a path is decoded only now); all of them are
    renamed into place together at the end, so a failure leaves every destination as it was."""
    import datasets

    with contextlib.ExitStack() as stack:
        for path, rows in outputs.items():
            if not rows:
                raise DcrError(f"no rows to write to {path}")
            rows = [
                {**row, "image": _open_image(row["image"]) if isinstance(row["image"], Path) else row["image"]}
                for row in rows
            ]
            tmp = stack.enter_context(atomic_path(path))
            datasets.Dataset.from_list(rows).cast_column("image", datasets.Image()).to_parquet(str(tmp))
    return list(outputs)


def _open_image(path: Path):
    from dcr_mllm.data.images import load_rgb

    return load_rgb(path)


def _image(path: Path, where: str) -> Path:
    if not path.is_file():
        raise DcrError(f"image {path} is missing ({where}); check the benchmark directory")
    return path


def read_mmvp(mmvp_dir: str | Path) -> list[dict]:
    """MMVP as distributed (``Questions.csv`` + ``MMVP Images/<Index>.jpg``), checked, images as paths,
    with ``MMVP_ANSWER_CORRECTIONS`` applied, so the local task scores what lmms-eval's ``mmvp`` does."""
    mmvp_dir = Path(mmvp_dir)
    csv_path = mmvp_dir / "Questions.csv"
    if not csv_path.is_file():
        raise DcrError(
            f"{csv_path} does not exist; pass the MMVP directory that holds Questions.csv and 'MMVP Images/'"
        )
    rows = []
    for line, row in enumerate(csv.DictReader(read_text(csv_path).splitlines()), start=2):
        try:
            index = int(row["Index"])
            answer = MMVP_ANSWER_CORRECTIONS.get(index, row["Correct Answer"])
            if not all(isinstance(v, str) for v in (row["Question"], row["Options"], answer)):
                raise TypeError
        except (KeyError, TypeError, ValueError) as err:
            raise DcrError(
                f"{csv_path} line {line} is malformed; expected Index,Question,Options,Correct Answer"
            ) from err
        rows.append(
            {
                "Index": index,
                "Question": row["Question"],
                "Options": row["Options"],
                "Correct Answer": answer,
                "image": _image(mmvp_dir / "MMVP Images" / f"{index}.jpg", f"{csv_path.name} line {line}"),
            }
        )
    return rows


def read_pope(pope_dir: str | Path, coco_dir: str | Path) -> dict[str, list[dict]]:
    """POPE question files (``coco_pope_<split>.json``, one JSON per line), every split checked, images as paths."""
    pope_dir, coco_dir = Path(pope_dir), Path(coco_dir)
    splits = {}
    for split in POPE_SPLITS:
        source = pope_dir / f"coco_pope_{split}.json"
        if not source.is_file():
            raise DcrError(f"{source} does not exist; pass the directory with POPE's coco_pope_<split>.json files")
        rows = []
        for line_no, line in enumerate(read_text(source).splitlines(), start=1):
            if not line.strip():
                continue
            item = loads_json(line, f"{source} line {line_no}")
            try:
                fields = {
                    "question_id": str(item["question_id"]),
                    "question": item["text"],
                    "answer": item["label"],
                    "image": item["image"],
                }
                if not all(isinstance(fields[k], str) for k in ("question", "answer", "image")):
                    raise TypeError
            except (KeyError, TypeError) as err:
                raise DcrError(
                    f"{source} line {line_no} is malformed; expected question_id, image, text, label (strings)"
                ) from err
            rows.append(
                {
                    **fields,
                    "category": split,
                    "image": _image(coco_dir / fields["image"], f"{source.name} line {line_no}"),
                }
            )
        splits[split] = rows
    return splits


def prepare_mmvp(mmvp_dir: str | Path, out_root: str | Path) -> Path:
    """``read_mmvp`` -> mmvp/test.parquet."""
    return write_eval_data({Path(out_root) / "mmvp" / "test.parquet": read_mmvp(mmvp_dir)})[0]


def prepare_pope(pope_dir: str | Path, coco_dir: str | Path, out_root: str | Path) -> list[Path]:
    """``read_pope`` -> pope/<split>.parquet."""
    return write_eval_data(
        {Path(out_root) / "pope" / f"{split}.parquet": rows for split, rows in read_pope(pope_dir, coco_dir).items()}
    )


def prepare_eval_data(
    out_root: str | Path,
    mmvp: str | Path | None = None,
    pope: str | Path | None = None,
    coco: str | Path | None = None,
    synthetic: bool | set[str] = False,
    seed: int = 0,
    world: int = 0,
) -> list[Path]:
    """Every requested set read and checked first, then all written together (``write_eval_data``);
    ``world``: that many world images (``seed`` + ``WORLD_QA_SEED``), a question per attribute each;
    ``synthetic``: True, or which of ``SYNTHETIC_SETS``. Each folder written records where its data
    came from (``generated.json``)."""
    root = Path(out_root)
    synthetic = set(SYNTHETIC_SETS) if synthetic is True else set(synthetic or ())
    outputs, sources = {}, {}
    if world:
        outputs[root / "world" / "test.parquet"] = world_qa_rows(world, WORLD_QA_SEED + seed)
        sources["world"] = world_recipe(world, seed)
    if "mmvp" in synthetic:
        outputs[root / "mmvp" / "test.parquet"] = synthetic_mmvp_rows(seed=seed)
        sources["mmvp"] = synthetic_recipe("mmvp", seed)
    if "pope" in synthetic:
        outputs.update(
            {root / "pope" / f"{split}.parquet": rows for split, rows in synthetic_pope_rows(seed=seed).items()}
        )
        sources["pope"] = synthetic_recipe("pope", seed)
    for name in synthetic & {"cv_bench", "countbenchqa"}:
        outputs[root / name / "test.parquet"] = SYNTHETIC_PERCEPTION[name](seed=seed)
        sources[name] = synthetic_recipe(name, seed)
    if mmvp:
        outputs[root / "mmvp" / "test.parquet"] = read_mmvp(mmvp)
        sources["mmvp"] = {"source": str(Path(mmvp).resolve())}
    if pope:
        outputs.update({root / "pope" / f"{split}.parquet": rows for split, rows in read_pope(pope, coco).items()})
        sources["pope"] = {"source": str(Path(pope).resolve()), "coco": str(Path(coco).resolve())}
    for folder in sources:  # a new file is never taken for the old one's source
        (root / folder / GENERATED).unlink(missing_ok=True)
    written = write_eval_data(outputs)
    for folder, recipe in sources.items():
        write_atomic(root / folder / GENERATED, json.dumps(recipe, indent=1, sort_keys=True))
    return written


DATA_VERSION = 2  # of the generated question sets: raise when their rows change


def world_recipe(count: int, seed: int = 0) -> dict:
    """What ``prepare-eval-data --world`` records of the set it writes (``dcr_mllm.io.generated_from``)."""
    return {"generator": "world-qa", "version": DATA_VERSION, "count": count, "seed": WORLD_QA_SEED + seed}


def synthetic_recipe(name: str, seed: int = 0) -> dict:
    return {"generator": f"synthetic-{name}", "version": DATA_VERSION, "seed": seed}


MMVP_QUESTIONS = {
    "orientation": "Which way do the shapes point?",
    "color": "What colour are the shapes?",
    "count": "How many shapes are there?",
    "position": "Where are the shapes?",
    "shape": "What shape are they?",
}


def synthetic_mmvp(out_root: str | Path, num_pairs: int = 10, image_size: int = 64, seed: int = 0) -> Path:
    """``synthetic_mmvp_rows`` -> mmvp/test.parquet."""
    return write_eval_data(
        {Path(out_root) / "mmvp" / "test.parquet": synthetic_mmvp_rows(num_pairs, image_size, seed)}
    )[0]


def synthetic_mmvp_rows(num_pairs: int = 10, image_size: int = 64, seed: int = 0) -> list[dict]:
    """MMVP-style pairs from the project's scenes: two images that differ in one attribute, the same
    question, opposite answers (image 1: (a), image 2: (b))."""
    from dcr_mllm.data.synthetic import make_pair

    rng = random.Random(seed)
    rows = []
    attributes = list(MMVP_QUESTIONS)
    for pair in range(num_pairs):
        attribute = attributes[pair % len(attributes)]
        (first, image_a), (second, image_b) = make_pair(rng, image_size, attribute)
        a, b = str(getattr(first, attribute)), str(getattr(second, attribute))
        for offset, (image, answer) in enumerate(((image_a, "(a)"), (image_b, "(b)"))):
            rows.append(
                {
                    "Index": 2 * pair + offset + 1,
                    "Question": MMVP_QUESTIONS[attribute],
                    "Options": f"(a) {a} (b) {b}",
                    "Correct Answer": answer,
                    "image": image,
                }
            )
    return rows


def synthetic_pope(
    out_root: str | Path, questions_per_split: int = 12, image_size: int = 64, seed: int = 0
) -> list[Path]:
    """``synthetic_pope_rows`` -> pope/<split>.parquet."""
    rows = synthetic_pope_rows(questions_per_split, image_size, seed)
    return write_eval_data(
        {Path(out_root) / "pope" / f"{split}.parquet": split_rows for split, split_rows in rows.items()}
    )


def synthetic_pope_rows(questions_per_split: int = 12, image_size: int = 64, seed: int = 0) -> dict[str, list[dict]]:
    """POPE-style yes/no object questions, balanced, in three splits: ``random`` asks about any
    absent colour, ``popular`` about the most common colour, ``adversarial`` about a colour that
    differs from the true one only in hue family (red/orange, blue/purple, ...)."""
    from dcr_mllm.data.synthetic import ATTRIBUTE_VALUES, render_scene, sample_attributes

    near = {
        "red": "orange",
        "orange": "red",
        "blue": "purple",
        "purple": "blue",
        "green": "yellow",
        "yellow": "green",
        "white": "yellow",
    }
    colors = list(ATTRIBUTE_VALUES["color"])
    splits = {}
    for split_index, split in enumerate(POPE_SPLITS):
        rng = random.Random(f"{seed}-{split}")
        rows = []
        for q in range(questions_per_split):
            attrs = sample_attributes(rng)
            if q % 2 == 0:
                asked, answer = attrs.color, "yes"
            else:
                asked = {
                    "random": rng.choice([c for c in colors if c != attrs.color]),
                    "popular": colors[0] if attrs.color != colors[0] else colors[1],
                    "adversarial": near.get(attrs.color, colors[0]),
                }[split]
                answer = "no"
            rows.append(
                {
                    "question_id": f"{split_index}{q:05d}",
                    "question": f"Is there a {asked} {attrs.shape} in the image?",
                    "answer": answer,
                    "category": split,
                    "image": render_scene(attrs, image_size),
                }
            )
        splits[split] = rows
    return splits


def synthetic_cv_bench_rows(per_source: int = 2, image_size: int = 64, seed: int = 0) -> list[dict]:
    """CV-Bench-style items with CV-Bench's fields: counting questions about the project's scenes,
    ``per_source`` under each of its sources (ADE20K and COCO as "2D", Omni3D as "3D"), so that its
    paper score is defined."""
    from dcr_mllm.data.synthetic import ATTRIBUTE_VALUES, render_scene, sample_attributes

    rng = random.Random(f"{seed}-cv_bench")
    counts = [str(c) for c in ATTRIBUTE_VALUES["count"]]
    rows = []
    for idx in range(per_source * 3):
        source = ("ADE20K", "COCO", "Omni3D")[idx % 3]
        attrs = sample_attributes(rng)
        question = f"How many {attrs.shape}s are in the image?"
        options = " ".join(f"({chr(65 + i)}) {c}" for i, c in enumerate(counts))
        rows.append(
            {
                "idx": idx,
                "type": "3D" if source == "Omni3D" else "2D",
                "task": "Count",
                "question": question,
                "choices": counts,
                "answer": f"({chr(65 + counts.index(str(attrs.count)))})",
                "prompt": f"{question} Select from the following choices.\n{options}",
                "filename": f"img/{idx}.png",
                "source": source,
                "source_dataset": "synthetic",
                "source_filename": f"{idx}.png",
                "image": render_scene(attrs, image_size),
            }
        )
    return rows


def synthetic_countbenchqa_rows(count: int = 6, image_size: int = 64, seed: int = 0) -> list[dict]:
    """CountBenchQA-style items with its fields (question, number, text, image) about the project's scenes."""
    from dcr_mllm.data.synthetic import caption, render_scene, sample_attributes

    rng = random.Random(f"{seed}-countbenchqa")
    rows = []
    for _ in range(count):
        attrs = sample_attributes(rng)
        rows.append(
            {
                "question": f"How many {attrs.shape}s are there in the image?",
                "number": attrs.count,
                "text": caption(attrs),
                "image": render_scene(attrs, image_size),
            }
        )
    return rows


SYNTHETIC_PERCEPTION = {"cv_bench": synthetic_cv_bench_rows, "countbenchqa": synthetic_countbenchqa_rows}
SYNTHETIC_SETS = ("mmvp", "pope", *SYNTHETIC_PERCEPTION)
