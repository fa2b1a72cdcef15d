"""Progress for long work: a bar on a terminal, a line at least every 15 s in a log, never silence."""

from __future__ import annotations

import sys


def progress(total: int, desc: str):
    """A tqdm bar over ``total`` units (a context manager; ``.update(n)``), on stderr."""
    from tqdm.auto import tqdm

    interactive = sys.stderr.isatty()
    return tqdm(
        total=total,
        desc=desc,
        dynamic_ncols=True,
        mininterval=1 if interactive else 15,
        maxinterval=30,
        file=sys.stderr,
    )


class ProgressLines:
    """For work that runs side by side in several processes (bars would overwrite each other): a
    line ``desc: step N/T (S s)`` at the start, at least every ``every`` seconds, and at the end."""

    def __init__(self, desc: str, total: int, every: float = 15.0):
        import time

        self.desc, self.total, self.every, self.clock = desc, total, every, time.monotonic
        self.start = self.last = self.clock()
        print(f"{desc}: started, {total} steps", file=sys.stderr, flush=True)

    def update(self, step: int, **scalars: float) -> None:
        now = self.clock()
        if now - self.last < self.every and step < self.total:
            return
        self.last = now
        values = "".join(f", {key} {value:.4g}" for key, value in scalars.items())
        print(f"{self.desc}: step {step}/{self.total} ({now - self.start:.0f} s{values})", file=sys.stderr, flush=True)
