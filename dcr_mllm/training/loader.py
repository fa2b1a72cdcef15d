"""Endless, resumable batches: epochs follow each other, and a run restarts where it stopped.

The position is (epoch, batches consumed in that epoch), per rank. On resume the epoch's
batches are replayed up to that point and dropped, so a resumed run sees exactly the batches
an uninterrupted run would have seen.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from dcr_mllm.errors import DcrError


class ResumableBatches:
    """Batches of ``batch_size`` samples, or, with ``batch_size=None``, the batches a dataset forms itself."""

    def __init__(self, dataset: Dataset | IterableDataset, batch_size: int | None, collate_fn: Callable | None, num_workers: int = 0):
        if not hasattr(dataset, "set_epoch"):
            raise TypeError("ResumableBatches needs a dataset with set_epoch(epoch), so each epoch has its own order")
        if hasattr(dataset, "check_workers"):  # fail here, in one line, rather than inside a worker
            dataset.check_workers(num_workers)
        self.dataset, self.batch_size, self.collate_fn, self.num_workers = dataset, batch_size, collate_fn, num_workers
        self.epoch, self.batch_in_epoch = 0, 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.batch_in_epoch = int(state["epoch"]), int(state["batch_in_epoch"])

    def __iter__(self) -> Iterator[dict]:
        while True:
            self.dataset.set_epoch(self.epoch)
            # its own generator: drawing worker seeds from the global RNG would shift the dropout
            # stream by when the loader was created, and a resumed run would differ
            loader = DataLoader(self.dataset, batch_size=self.batch_size, num_workers=self.num_workers,
                                collate_fn=self.collate_fn, drop_last=self.batch_size is not None,
                                generator=torch.Generator().manual_seed(self.epoch))
            produced = 0
            for index, batch in enumerate(loader):
                produced += 1
                if index < self.batch_in_epoch:
                    continue  # replaying a resumed epoch up to where it stopped
                self.batch_in_epoch += 1
                yield batch
            if produced == 0:
                raise DcrError("the training data gives no full batch for this process; add data or lower micro_batch_size")
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0
