"""MMVP-VLM (Tong et al., *Eyes Wide Shut?*): can a tower tell apart images that CLIP confuses?

The benchmark directory, as distributed::

    Questions.csv                      header, then rows: question id, type, statement
    MLLM_VLM Images/<type>/<id>.jpg    one image per question id

Consecutive rows form a pair (ids 2k+1 and 2k+2, both images in the first row's type folder);
the image of an odd id is image 1, of an even id image 2. Scoring follows the official
``evaluate_vlm.py`` (see ``pairs``): prompt ``"a photo of " + statement``, a pair counts when both
statements pick their own image, the 135 pairs are 15 per category in file order over
``CATEGORIES``, and a category's score is the percentage of its pairs right; ``average`` is the
mean over categories. Unlike the official script, each image and text is encoded once, in batches.

Pixels: ``preprocess="tower"`` (the default) uses the tower's own image processor, as DCR's own
MMVP-VLM scripts do (boyuh/DCR evaluation/evaluate_mmvp_*.py: ``processor.preprocess``) and for
every family alike. ``preprocess="official"`` reproduces the official script's pixels instead:
the ``clip`` package's PIL pipeline (``official_transform``), for numbers comparable with the
MMVP paper's; the two differ slightly, since transformers' processors resize tensors, not PIL images.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from torch import Tensor

from dcr_mllm.errors import DcrError
from dcr_mllm.evaluation.tower.encode import image_embeddings, text_embeddings
from dcr_mllm.evaluation.tower.pairs import PROMPT, judge_pairs, percent
from dcr_mllm.evaluation.tower.report import BenchmarkResult
from dcr_mllm.strict import read_text
from dcr_mllm.towers import TowerSpec, VisionTower

CATEGORIES = (
    "Orientation and Direction",
    "Presence of Specific Features",
    "State and Condition",
    "Quantity and Count",
    "Positional and Relational Context",
    "Color and Appearance",
    "Structural Characteristics",
    "Texts",
    "Viewpoint and Perspective",
)
PAIRS_PER_CATEGORY = 15
NUM_ROWS = 2 * PAIRS_PER_CATEGORY * len(CATEGORIES)  # 270 statements
QUESTIONS_FILE = "Questions.csv"
HEADER = ("Question ID", "Type", "Statement")
IMAGES_DIR = "MLLM_VLM Images"
PREPROCESS = ("tower", "official")


@dataclass(frozen=True)
class Statement:
    qid: int
    type: str
    text: str
    line: int  # in Questions.csv, for error messages


@dataclass(frozen=True)
class QuestionPair:
    first: Statement
    second: Statement
    category: str

    def image_paths(self, data_dir: Path) -> tuple[Path, Path]:
        """Both images live in the first statement's type folder, as the official script reads them."""
        folder = data_dir / IMAGES_DIR / self.first.type
        return folder / f"{self.first.qid}.jpg", folder / f"{self.second.qid}.jpg"


def ground_truth(qid: int) -> str:
    """The image a statement describes: image 1 for an odd question id, image 2 for an even one."""
    return "img1" if qid % 2 == 1 else "img2"


def read_benchmark(data_dir: str | Path) -> list[QuestionPair]:
    """Parse and check Questions.csv and that every image exists, before any model is loaded."""
    data_dir = Path(data_dir)
    questions = data_dir / QUESTIONS_FILE
    if not questions.is_file():
        raise DcrError(
            f"no {QUESTIONS_FILE} in {data_dir}: point --data at the MMVP-VLM directory "
            f"(Questions.csv and '{IMAGES_DIR}/'), or write a synthetic one with `dcr-mllm make-eval-data mmvp-vlm`"
        )
    lines = read_text(questions).splitlines()
    rows = [(line, row) for line, row in enumerate(csv.reader(lines), start=1) if any(cell.strip() for cell in row)]
    if not rows or [cell.strip().lower() for cell in rows[0][1]] != [name.lower() for name in HEADER]:
        found = ",".join(rows[0][1]) if rows else "an empty file"
        raise DcrError(
            f"{questions} must start with the header {','.join(HEADER)} (the official MMVP-VLM layout); found {found[:80]!r}"
        )
    statements = [_statement(questions, line, row) for line, row in rows[1:]]  # the first row is the header
    if len(statements) != NUM_ROWS:
        raise DcrError(
            f"{questions} has {len(statements)} statement rows; MMVP-VLM has {NUM_ROWS} "
            f"({len(CATEGORIES)} categories x {PAIRS_PER_CATEGORY} pairs x 2): re-download the benchmark"
        )
    pairs = []
    for index in range(0, NUM_ROWS, 2):
        first, second = statements[index], statements[index + 1]
        if first.qid % 2 != 1 or second.qid != first.qid + 1:
            raise DcrError(
                f"{questions} lines {first.line}-{second.line}: question ids {first.qid}, {second.qid} "
                "do not form a pair (an odd id, then the next one); keep the rows in their original order"
            )
        pair = QuestionPair(first, second, CATEGORIES[len(pairs) // PAIRS_PER_CATEGORY])
        for path, statement in zip(pair.image_paths(data_dir), (first, second)):
            if not path.is_file():
                raise DcrError(
                    f"missing image {path} (question {statement.qid}, {questions.name} line {statement.line}): "
                    "the benchmark directory is incomplete, re-download it"
                )
        pairs.append(pair)
    return pairs


def _statement(questions: Path, line: int, row: list[str]) -> Statement:
    if len(row) != 3:
        raise DcrError(
            f"{questions} line {line}: expected 3 fields (question id, type, statement), got {len(row)}: {row!r}"
        )
    qid, qtype, text = (cell.strip() for cell in row)
    if not qid.isdigit():
        raise DcrError(f"{questions} line {line}: question id {qid!r} is not a positive integer")
    if not qtype or not text:
        raise DcrError(f"{questions} line {line}: the type and the statement must not be empty")
    return Statement(int(qid), qtype, text, line)


def _convert_image_to_rgb(image: Image.Image) -> Image.Image:
    return image.convert("RGB")


def official_transform(spec: TowerSpec) -> Callable[[Image.Image], Tensor]:
    """The official script's pixels: it takes ``preprocess`` from ``clip.load`` (tsb0601/MMVP
    scripts/evaluate_vlm.py:15) and applies it to each ``Image.open`` result (lines 49-50, 58), and
    that is the ``clip`` package's ``_transform(n_px)`` (openai/CLIP clip/clip.py:75-86)::

        Compose([Resize(n_px, interpolation=BICUBIC), CenterCrop(n_px), _convert_image_to_rgb,
                 ToTensor(), Normalize(OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)])

    on PIL images: bicubic resize of the short side, centre crop, RGB, [0, 1], normalise. Here
    ``n_px`` is the tower's image size and the mean/std are the tower's (OpenAI CLIP's for CLIP)."""
    from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Normalize, Resize, ToTensor

    size = spec.image_size
    return Compose(
        [
            Resize(size, interpolation=InterpolationMode.BICUBIC),
            CenterCrop(size),
            _convert_image_to_rgb,
            ToTensor(),
            Normalize(spec.mean, spec.std),
        ]
    )


def evaluate_mmvp_vlm(
    tower: VisionTower,
    data_dir: str | Path,
    batch_size: int = 64,
    pairs: list[QuestionPair] | None = None,
    preprocess: str = "tower",
) -> BenchmarkResult:
    """Score ``tower`` on the benchmark at ``data_dir`` (``pairs``: an already read ``read_benchmark``;
    ``preprocess``: "tower" or "official", see the module docstring).

    Args:
        tower: the tower scored; its text side encodes the statements.
        data_dir: the benchmark directory (``Questions.csv``, ``MLLM_VLM Images/``).
        batch_size: images or texts encoded at once.
        pairs: the question pairs, already read; None: read from ``data_dir``.
        preprocess: whose pixels: "tower" (its own image processor) or "official" (the MMVP script's).
    """
    if preprocess not in PREPROCESS:
        raise DcrError(f"preprocess {preprocess!r}: use one of {', '.join(PREPROCESS)}")
    data_dir = Path(data_dir)
    pairs = read_benchmark(data_dir) if pairs is None else pairs
    paths = [path for pair in pairs for path in pair.image_paths(data_dir)]
    transform = official_transform(tower.spec) if preprocess == "official" else None
    images = image_embeddings(tower, paths, batch_size, desc="MMVP-VLM images", transform=transform)
    texts = text_embeddings(tower, [PROMPT + s.text for pair in pairs for s in (pair.first, pair.second)], batch_size)
    verdicts = judge_pairs(tower, images[0::2], images[1::2], texts[0::2], texts[1::2])

    outcomes: dict[str, list[bool]] = {category: [] for category in CATEGORIES}
    predictions = []
    for pair, (pred1, pred2, score1, score2) in zip(pairs, verdicts):
        gt1, gt2 = ground_truth(pair.first.qid), ground_truth(pair.second.qid)
        outcomes[pair.category].append(pred1 == gt1 and pred2 == gt2)
        predictions.append(
            {
                "category": pair.category,
                "qid1": pair.first.qid,
                "qid2": pair.second.qid,
                "pred1": pred1,
                "pred2": pred2,
                "gt1": gt1,
                "gt2": gt2,
                "img1_score1": score1,
                "img1_score2": score2,
            }
        )
    scores = {category: percent(sum(outcomes[category]), PAIRS_PER_CATEGORY) for category in CATEGORIES}
    scores["average"] = sum(scores.values()) / len(CATEGORIES)
    outcomes["average"] = [right for category in CATEGORIES for right in outcomes[category]]  # equal-sized: the mean
    return BenchmarkResult(scores, predictions, outcomes)
