"""``eval-tower --benchmark clip-benchmark``: zero-shot classification and retrieval on the data sets
of LAION's clip_benchmark (the harness DIVA reports its zero-shot results with), read from a local
root, so a tower's drift from its base is measured the way the field measures it.

``--data ROOT`` holds one folder per data set, named as clip_benchmark's ``--dataset_root
ROOT/{dataset_cleaned}`` names them (``/`` written ``-``): ``ROOT/wds-<name>`` is the webdataset
``wds/<name>`` (``classnames.txt``, ``zeroshot_classification_templates.txt``, optional
``dataset_type.txt``, ``test/nshards.txt`` and ``test/0.tar``...), ``ROOT/flickr30k`` or
``ROOT/mscoco_captions`` a retrieval set in clip_benchmark's layout, ``ROOT/cifar10`` and the other
torchvision sets as torchvision stores them. Nothing is downloaded.

clip_benchmark reads the data, builds the zero-shot classifier from the set's class names and
templates, runs the classification and scores retrieval. The top-1 of each image is counted here
(its ``evaluate`` returns only the mean, and its ``accuracy`` fails on numpy 2.4), so each
accuracy has its interval and its paired test against the first tower. Mixed precision is off:
on CPU clip_benchmark's ``amp`` is bfloat16.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from dcr_mllm.errors import DcrError
from dcr_mllm.evaluation.tower.report import BenchmarkResult

TASKS = ("zeroshot_classification", "zeroshot_retrieval")
RECALL_AT = (1, 5, 10)


@dataclass(frozen=True)
class ClipBenchmarkSet:
    name: str  # clip_benchmark's name, e.g. "wds/vtab-cifar10" or "flickr30k"
    root: Path
    task: str


def read_clip_benchmark(root: str | Path) -> list[ClipBenchmarkSet]:
    """The data sets under ``root``, each with the task clip_benchmark runs on it; checked before any tower loads."""
    from clip_benchmark.datasets.builder import get_dataset_default_task

    root = Path(root)
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DcrError(f"--data {root} holds no data set folder; lay out clip_benchmark's sets as ROOT/<name>")
    sets = []
    for folder in folders:
        name = "wds/" + folder.name.removeprefix("wds-") if folder.name.startswith("wds-") else folder.name
        if name.startswith("wds/"):
            if not (folder / "test" / "nshards.txt").is_file():
                raise DcrError(
                    f"{folder}: a webdataset set needs test/nshards.txt and test/0.tar ...; see clip_benchmark"
                )
            kind = folder / "dataset_type.txt"
            retrieval = kind.is_file() and kind.read_text(encoding="utf-8").strip().lower() == "retrieval"
            task = "zeroshot_retrieval" if retrieval else "zeroshot_classification"
        else:
            task = get_dataset_default_task(name)
        if task not in TASKS:
            raise DcrError(
                f"{folder}: clip_benchmark scores {name} by {task}; only {' and '.join(TASKS)} are read here"
            )
        sets.append(ClipBenchmarkSet(name, folder, task))
    return sets


class _Texts(list):
    """Captions on their way to the tower: clip_benchmark moves a tokenizer's output to the device;
    the tower tokenizes them itself."""

    def to(self, device):
        return self


class _Harness:
    """The tower as clip_benchmark calls a model: ``encode_image`` and ``encode_text``."""

    def __init__(self, tower):
        self.tower = tower

    def encode_image(self, pixels):
        return self.tower.global_embedding(pixels.to(self.tower.dtype)).float()

    def encode_text(self, texts):
        return self.tower.encode_text(list(texts)).float()


def evaluate_clip_benchmark(tower, sets: list[ClipBenchmarkSet], batch_size: int = 64) -> BenchmarkResult:
    """Zero-shot top-1 (classification sets) and recall@k (retrieval sets), in percent, of ``tower``.

    Args:
        tower: the tower scored; its text side encodes the class prompts and captions.
        sets: ``read_clip_benchmark``'s data sets.
        batch_size: images encoded at once.
    """
    from clip_benchmark.datasets.builder import build_dataset, get_dataset_collate_fn
    from clip_benchmark.metrics import zeroshot_classification, zeroshot_retrieval

    tower.require_text_side()
    model, device = _Harness(tower), str(tower.mean.device)

    def transform(image):
        return tower.preprocess([image.convert("RGB")])[0]

    scores, outcomes = {}, {}
    for data in sets:
        try:
            dataset = build_dataset(
                data.name, root=str(data.root), transform=transform, split="test", download=False, task=data.task
            )
        except (OSError, ValueError, KeyError, RuntimeError) as err:
            raise DcrError(f"{data.root}: clip_benchmark cannot read {data.name} ({err}); check its layout") from err
        if isinstance(dataset, torch.utils.data.IterableDataset):  # a webdataset: batched as clip_benchmark does
            loader = torch.utils.data.DataLoader(dataset.batched(batch_size), batch_size=None)
        else:
            loader = torch.utils.data.DataLoader(
                dataset, batch_size=batch_size, collate_fn=get_dataset_collate_fn(data.name)
            )
        with torch.no_grad():
            if data.task == "zeroshot_classification":
                if not dataset.classes or not dataset.templates:
                    raise DcrError(f"{data.root}: {data.name} has no class names or templates; add them")
                classifier = zeroshot_classification.zero_shot_classifier(
                    model, _Texts, dataset.classes, dataset.templates, device, amp=False
                )
                logits, target = zeroshot_classification.run_classification(
                    model, classifier, loader, device, amp=False
                )
                right = (logits.argmax(dim=1) == target).tolist()
                outcomes[f"{data.name}/top1"] = right
                scores[f"{data.name}/top1"] = 100 * sum(right) / len(right)
            else:
                images = sum(len(batch[0]) for batch in loader)
                recall_at = [k for k in RECALL_AT if k <= images]
                metrics = zeroshot_retrieval.evaluate(model, loader, _Texts, device, amp=False, recall_k_list=recall_at)
                for k in recall_at:
                    scores[f"{data.name}/image_recall@{k}"] = 100 * float(metrics[f"image_retrieval_recall@{k}"])
                    scores[f"{data.name}/text_recall@{k}"] = 100 * float(metrics[f"text_retrieval_recall@{k}"])
    return BenchmarkResult(scores, [], outcomes)


__all__ = ["ClipBenchmarkSet", "evaluate_clip_benchmark", "read_clip_benchmark"]
