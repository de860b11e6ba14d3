"""What each worker trains and evaluates on, chunk by chunk (harness/trainrun/plan.py says which mode):
make_batch's batches or a source side's, sharded over the ranks; the torch loader's order as index
lists, each rank its part of each; or nothing, each side reading its own pass. Also the torch-side
batches of given steps, which localization traces on both sides."""

from __future__ import annotations

import numpy as np

from harness.errors import UsageError
from harness.trainrun.plan import GIVEN, ORDERED, OWN, SOURCE, Plan
from harness.workers import ranks
from harness.workers.protocol import SIDES, Op, Request, epoch_seed

BIG = 1 << 40  # no byte limit on a chunk of training batches: its step count bounds it


class Feeder:
    def __init__(self, session, plan: Plan):
        self.session, self.plan = session, plan
        self._orders: dict = {}  # epoch -> its index lists (the torch loader's sampler order)

    @property
    def workers(self) -> list:
        return [name for side in SIDES for name in self.session.ranks[side]]

    def chunk(self, start: int, count: int, *, skip: int = 0) -> dict:
        """Each worker's RUN_STEPS for steps start .. start + count."""
        epoch, offset = self.plan.epoch_of(start)
        common = {"count": count, "total": self.plan.total, "epoch": epoch}
        n = self.session.layout.nprocs
        if self.plan.mode == OWN:
            return {w: Request(Op.RUN_STEPS, {**common, "skip": skip}) for w in self.workers}
        if self.plan.mode == ORDERED:
            lists = self.order(epoch)[offset:offset + count]
            return {w: Request(Op.RUN_STEPS, {**common, "indices": [_part(idx, r % n, n) for idx in lists]})
                    for w, r in self._ranked()}
        batches = self.batches(start, count)
        if n == 1:
            return {w: Request(Op.RUN_STEPS, {**common, "batches": batches}) for w in self.workers}
        return {w: Request(Op.RUN_STEPS, {**common, "batches": [ranks.shard(b, r, n) for b in batches]})
                for w, r in self._ranked()}

    def _ranked(self):
        for side in SIDES:
            yield from ((name, r) for r, name in enumerate(self.session.ranks[side]))

    def order(self, epoch: int) -> list:
        """The torch loader's batches in `epoch` as index lists (read once per epoch, the last kept)."""
        if epoch not in self._orders:
            got = self.session.one("torch", Op.RUN_ORDER, epoch=epoch)
            bounds = np.cumsum(np.asarray(got["sizes"]))[:-1]
            self._orders = {epoch: [list(map(int, part)) for part in np.split(np.asarray(got["indices"]), bounds)]}
        return self._orders[epoch]

    def batches(self, start: int, count: int) -> list:
        """The batches of global steps start .. start + count (make_batch's, or the source side's)."""
        if self.plan.mode == GIVEN:
            return [self.session.data.batch(s, keep=False) for s in range(start, start + count)]
        epoch, offset = self.plan.epoch_of(start)
        side = self.plan.source
        seed = epoch_seed(self.session.cfg.data.seed, epoch)
        got = self.session.one(side, Op.DATA_BATCHES, split="train", start=offset, count=count, max_bytes=BIG,
                               seed=seed)
        where = f"data_{side}('train') epoch {epoch}"
        if len(got["batches"]) < count:
            raise UsageError(f"{where} ended after {offset + len(got['batches'])} batches; its len() said "
                             f"{self.plan.per_epoch}")
        for i, batch in enumerate(got["batches"]):
            self.session.data.check(batch, f"{where} batch {offset + i}")
        return got["batches"]

    def traced(self, start: int, count: int) -> list:
        """The torch side's batches of steps start .. start + count, which localization gives both
        sides (in `own`, torch's own pass; in `ordered`, torch's items at its order)."""
        if self.plan.mode in (GIVEN, SOURCE):
            return self.batches(start, count)
        epoch, offset = self.plan.epoch_of(start)
        count = min(count, (self.plan.per_epoch or start + count) - offset)  # within the epoch
        if self.plan.mode == ORDERED:
            return self.session.one("torch", Op.DATA_BATCHES, split="train",
                                    indices=self.order(epoch)[offset:offset + count])["batches"]
        seed = epoch_seed(self.session.cfg.data.seed, epoch)
        return self.session.one("torch", Op.DATA_BATCHES, split="train", start=offset, count=count, max_bytes=BIG,
                                seed=seed)["batches"]

    def evaluations(self):
        """The parts of one evaluation: each a request to rank 0 of both sides."""
        if self.plan.mode == GIVEN:
            yield self.session.for_both(Op.RUN_EVAL, batches=self.session.data.heldout())
        elif self.plan.mode == SOURCE:
            chunks = _flagged(self.session.data.evaluation())
            for chunk, first, last in chunks:
                yield self.session.for_both(Op.RUN_EVAL, batches=chunk, begin=first, end=last)
        else:
            yield self.session.for_both(Op.RUN_EVAL)


def _part(indices: list, rank: int, nprocs: int) -> list:
    """A rank's contiguous part of a batch's index list (as rows are sharded everywhere here)."""
    if len(indices) % nprocs:
        raise UsageError(f"a train batch of {len(indices)} items does not split evenly over {nprocs} ranks "
                         "(drop_last=True in the loader, or a batch size divisible by --nprocs)")
    per = len(indices) // nprocs
    return indices[rank * per:(rank + 1) * per]


def _flagged(chunks):
    """(chunk, first, last) of an iterator of chunks, looking one ahead."""
    previous, first = None, True
    for chunk in chunks:
        if previous is not None:
            yield previous, first, False
            first = False
        previous = chunk
    if previous is not None:
        yield previous, first, True

