"""Endless, resumable batches: epochs follow each other, and a run restarts where it stopped.

The position is the epoch plus, per DataLoader reader, how far its stream has been consumed
(``dcr_mllm.data.position``). Each batch carries its reader's position out of the worker; on
resume the dataset passes over what each reader had consumed without decoding it, and the
loader's turn order continues with the reader whose turn came next, so a resumed run sees
exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch.utils.data import (
    DataLoader,
    Dataset,
    IterableDataset,
    default_collate,
    default_convert,
    get_worker_info,
)

from dcr_mllm.data.position import ReadPosition
from dcr_mllm.errors import DcrError
from dcr_mllm.training.preemption import ignore_in_workers


class ResumableBatches:
    """Batches of ``batch_size`` samples, or, with ``batch_size=None``, the batches a dataset forms itself."""

    def __init__(
        self,
        dataset: Dataset | IterableDataset,
        batch_size: int | None,
        collate_fn: Callable | None,
        num_workers: int = 0,
    ):
        if not hasattr(dataset, "set_epoch") or not isinstance(getattr(dataset, "position", None), ReadPosition):
            raise TypeError(
                "ResumableBatches needs a dataset with set_epoch(epoch) and a ReadPosition as `position`, "
                "so each epoch has its own order and a run can resume inside it"
            )
        if hasattr(dataset, "check_workers"):  # fail here, in one line, rather than inside a worker
            dataset.check_workers(num_workers)
        self.dataset, self.batch_size, self.num_workers = dataset, batch_size, num_workers
        self.collate_fn = collate_fn or (default_convert if batch_size is None else default_collate)
        self.readers = max(num_workers, 1)
        self._new_epoch(0)

    def _new_epoch(self, epoch: int) -> None:
        self.epoch, self.batch_in_epoch = epoch, 0
        self.reader_done, self.next_reader = [0] * self.readers, 0

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "reader_done": list(self.reader_done),
            "next_reader": self.next_reader,
        }

    def load_state_dict(self, state: dict) -> None:
        if "reader_done" not in state:
            raise DcrError(
                "the checkpoint predates per-reader data positions; delete its checkpoints folder to restart the stage"
            )
        done = [int(n) for n in state["reader_done"]]
        if len(done) != self.readers:
            raise DcrError(
                f"the checkpoint was written with {len(done)} data reader(s), this run has {self.readers}; "
                f"resume with num_workers={len(done) if len(done) > 1 else 0}"
            )
        self.epoch, self.batch_in_epoch = int(state["epoch"]), int(state["batch_in_epoch"])
        self.reader_done, self.next_reader = done, int(state["next_reader"])

    def __iter__(self) -> Iterator[dict]:
        collate = _WithPosition(self.collate_fn, self.dataset)
        while True:
            self.dataset.set_epoch(self.epoch)
            self.dataset.position.seek(self.reader_done, self.next_reader)
            # its own generator: drawing worker seeds from the global RNG would shift the dropout
            # stream by when the loader was created, and a resumed run would differ
            loader = DataLoader(
                self.dataset,
                batch_size=self.batch_size,
                num_workers=self.num_workers,
                collate_fn=collate,
                drop_last=self.batch_size is not None,
                generator=torch.Generator().manual_seed(self.epoch),
                worker_init_fn=ignore_in_workers if self.num_workers else None,
            )
            for batch, (reader, done) in loader:
                self.reader_done[reader] = done
                self.next_reader = (reader + 1) % self.readers
                self.batch_in_epoch += 1
                yield batch
            if self.batch_in_epoch == 0:
                raise DcrError(
                    "the training data gives no full batch for this process; add data or lower micro_batch_size"
                )
            self._new_epoch(self.epoch + 1)


class _WithPosition:
    """Collates in the DataLoader worker and attaches (reader, units consumed) from that worker's
    own copy of the dataset, which is the only place the position is known."""

    def __init__(self, collate_fn: Callable, dataset):
        self.collate_fn, self.dataset = collate_fn, dataset

    def __call__(self, items):
        info = get_worker_info()
        position = (info.dataset if info is not None else self.dataset).position
        return self.collate_fn(items), (position.reader, position.done)
