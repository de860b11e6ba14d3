"""Batches from one worker's own data ([data] source = "torch" or "paddle": the pair's data_torch or
data_paddle): made once by that worker, held by the coordinator as they arrive (arrays of 1 MiB
or more as shared-memory handles, never read here) and sent on as they are to both workers, each
of which makes its own framework's tensors of them. The train split's batches are kept, in order,
for every check that trains; the eval split is streamed in chunks, so a split of any size passes
through in bounded memory."""

from __future__ import annotations

from typing import Callable, Iterator

from harness.errors import UsageError
from harness.workers.protocol import Op, Request

CHUNK_BATCHES = 16  # batches a chunk of a streamed split holds at most
CHUNK_BYTES = 64 << 20  # and the bytes after which the source worker ends a chunk early


class Feed:
    """The same interface as harness/pair/batches.BatchSource: batch(step) and batches(steps) are
    the train split's batches at those steps; evaluation() the whole eval split in chunks;
    heldout() the first `heldout_count` batches of the eval split."""

    def __init__(self, call: Callable[[dict], dict], side: str, *, pair, heldout_count: int,
                 check: Callable[[dict, str], None]):
        self.call, self.side, self.pair, self.check = call, side, pair, check
        self.heldout_count = heldout_count
        self._train: list = []
        self._ended = False  # the train split has no more batches
        self._heldout: list | None = None
        self._eval_count: int | None = None

    @property
    def source(self) -> str:
        return self.side

    def defines(self, name: str) -> bool:
        return self.pair.defines(name)

    def close(self) -> None:
        self.pair.close()

    def where(self, split: str) -> str:
        return f"data_{self.side}('{split}')"

    def _fetch(self, split: str, start: int, count: int) -> dict:
        reply = self.call({self.side: Request(Op.DATA_BATCHES, {"split": split, "start": start, "count": count,
                                                                "max_bytes": CHUNK_BYTES})})[self.side]
        for i, batch in enumerate(reply["batches"]):
            self.check(batch, f"{self.where(split)} batch {start + i}")
        return reply

    def _fill(self, n: int) -> None:
        while len(self._train) < n and not self._ended:
            reply = self._fetch("train", len(self._train), min(n - len(self._train), CHUNK_BATCHES))
            self._train += reply["batches"]
            self._ended = reply["end"]

    def batch(self, step: int) -> dict:
        self._fill(step + 1)
        if step >= len(self._train):
            raise UsageError(f"{self.where('train')} has {len(self._train)} batches: batch {step} was asked for")
        return self._train[step]

    def batches(self, steps) -> list:
        """The train batches at `steps`, those the split has: a check asking for more says so."""
        steps = list(steps)
        self._fill(max(steps) + 1 if steps else 0)
        return [self._train[s] for s in steps if s < len(self._train)]

    def eval_count(self) -> int | None:
        """Batches of the eval split, where its data says (for progress counts)."""
        if self._eval_count is None:
            desc = self.call({self.side: Request(Op.DATA_OPEN, {"split": "eval", "batches": 0})})[self.side]
            self._eval_count = desc["batches"]
        return self._eval_count

    def evaluation(self) -> Iterator[list]:
        """The whole eval split, chunk by chunk, from a fresh pass; one with no len(), whose end
        cannot be known in advance, only its first `heldout_count` batches ([data] eval_batches)."""
        start, limit = 0, self.eval_count()
        while True:
            want = CHUNK_BATCHES if limit is not None else self.heldout_count - start
            reply = self._fetch("eval", start, want)
            start += len(reply["batches"])
            if reply["batches"]:
                yield reply["batches"]
            if not start and reply["end"]:
                raise UsageError(f"{self.where('eval')} yields no batch: the metric check needs one at least")
            if reply["end"] or limit is None and start >= self.heldout_count:
                return

    def described(self, seen: int) -> str:
        """What the metric ran over, for its note."""
        if self.eval_count() is None:
            return (f"over the first {seen} batches of {self.where('eval')} ([data] eval_batches): it has no len(), "
                    "so where it ends is not known")
        return f"over the whole eval split of {self.where('eval')}: {seen} batches"

    def short(self, got: int, asked: int, what: str) -> str | None:
        """A note when the train split has fewer batches than a check asked for (never padded)."""
        if got >= asked:
            return None
        return f"{what} asked for {asked} steps, {self.where('train')} has {got} batches: {got} steps ran"

    def heldout(self) -> list:
        """The train check's held-out batches: the first of the eval split."""
        if self._heldout is None:
            self._heldout = []
            for chunk in self.evaluation():
                self._heldout += chunk[:self.heldout_count - len(self._heldout)]
                if len(self._heldout) == self.heldout_count:
                    break
        return self._heldout
