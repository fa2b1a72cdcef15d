"""Where a streamed dataset stands in its epoch, per reader, so a resumed run can pass over what
it already read without decoding it.

A DataLoader with W workers gets W readers; it takes batches from them in turn, skipping those
that have run out. A dataset holding a ``ReadPosition`` counts the units each reader has
consumed (samples pulled from its stream, or whole batches) and, after ``seek``, lets each reader
pass over its first units cheaply. For the resumed loader to continue the same turn order, its
worker i plays reader (first + i) % W, where ``first`` is the reader whose turn came next.
"""

from __future__ import annotations


class ReadPosition:
    def __init__(self) -> None:
        self.skip: list[int] = []  # units each reader passes over at the start of the next iteration
        self.first = 0
        self.reader = 0  # the reader this process plays in the current iteration
        self.done = 0  # units it has consumed in this epoch, those passed over included

    def seek(self, done_per_reader: list[int], first: int) -> None:
        """Start the next iteration after ``done_per_reader[r]`` units of reader r, with
        DataLoader worker 0 playing reader ``first``; ``[]`` starts the epoch afresh."""
        self.skip, self.first = list(done_per_reader), first

    def begin(self, worker: int, num_workers: int) -> tuple[int, int]:
        """Called by the dataset's ``__iter__``: (the reader this worker plays, units to pass over)."""
        self.reader = (self.first + worker) % num_workers
        self.done = 0
        return self.reader, self.skip[self.reader] if self.skip else 0
