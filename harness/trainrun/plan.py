"""What a training run will do, decided before its first step: where each side's batches come from,
how many steps, where the epochs end and when both sides evaluate.

The batches (the `mode`):

- given: make_batch's, from the data worker, the same to both (a pair without data_torch/data_paddle,
  or [data] source = "make_batch"); steps only, there are no epochs;
- source: a side's own train split (`[data] source = "torch"` or `"paddle"`), read by that side's
  worker, the same batches to both;
- ordered: each side its own dataset and collate_fn, in the order the torch loader's sampler draws
  (its index lists, shuffled anew each epoch): where both sides have items by index and batches of
  the same sizes;
- own: each side reads its own loader as it is (its own order): where it cannot be shared.

In the first three, the two runs see the same batches in the same order (the paired regime of
harness/verdict/band.py, if their dropouts draw alike too); in `own`, the independent regime."""

from __future__ import annotations

from dataclasses import dataclass, field

from harness.errors import UsageError
from harness.verdict.band import INDEPENDENT, PAIRED

GIVEN, SOURCE, ORDERED, OWN = "given", "source", "ordered", "own"
CHUNK_STEPS = 16  # steps per request at most: the curves reach the coordinator (and the console) this often
EVALS_WITHOUT_EPOCHS = 5  # evaluations of a run on make_batch's batches, which has no epochs


@dataclass(frozen=True)
class Plan:
    mode: str
    total: int  # steps
    per_epoch: int | None  # batches of an epoch (the leading side's); None: no epochs
    evals: tuple  # the steps after which both sides evaluate, the last one included
    source: str = "torch"  # the side whose batches (source) or order (ordered) both take
    notes: tuple = field(default_factory=tuple)

    @property
    def regime(self) -> str:
        return INDEPENDENT if self.mode == OWN else PAIRED

    def epoch_of(self, step: int) -> tuple:
        """(epoch, batches of it done) at global step `step`."""
        if not self.per_epoch:
            return 0, step
        return divmod(step, self.per_epoch)

    def chunks(self, start: int):
        """(first step, steps) from `start` to the end: never across an evaluation or an epoch's end."""
        step = start
        while step < self.total:
            stops = [e for e in self.evals if e > step] + [self.total]
            if self.per_epoch:
                stops.append((step // self.per_epoch + 1) * self.per_epoch)
            count = min(min(stops) - step, CHUNK_STEPS)
            yield step, count
            step += count


def mode_of(cfg, data) -> str:
    """Where the batches come from: make_batch's, a source side's, or each side's own (2.4)."""
    if cfg.data.source == "make_batch" or not all(data.defines(f"data_{side}") for side in ("torch", "paddle")):
        if cfg.train.epochs is not None:
            raise UsageError(f"{cfg.source}: [train] epochs needs the pair's own data (data_torch/data_paddle); "
                             "make_batch's batches have no epochs: give [train] steps")
        return GIVEN
    return SOURCE if cfg.data.source in ("torch", "paddle") else OWN


def shared_order(torch_desc: dict, paddle_desc: dict) -> str | None:
    """Why the torch loader's order cannot be shared with paddle (None: it can)."""
    if torch_desc.get("sizes") is None:
        return "the torch train split has no batch sampler to read its order from (an iterable of batches)"
    if paddle_desc.get("length") is None:
        return "the paddle train split has no items by index (an iterable of batches)"
    if paddle_desc.get("sizes") is not None and list(paddle_desc["sizes"]) != list(torch_desc["sizes"]):
        return (f"the paddle train loader makes {len(paddle_desc['sizes'])} batches of other sizes than torch's "
                f"{len(torch_desc['sizes'])} (the data check compares them)")
    return None


def make_plan(cfg, mode: str, descs: dict, nprocs: int = 1) -> Plan:
    """The plan from the config and what each side's train split is (data_open), where it matters;
    nprocs: ranks per side, each taking an equal part of every batch."""
    source = cfg.data.source if mode == SOURCE else "torch"
    sizes = (descs.get(source) or {}).get("sizes")
    uneven = [i for i, n in enumerate(sizes if sizes is not None and nprocs > 1 else []) if n % nprocs]
    if uneven:
        raise UsageError(f"data_{source}('train'): batch {uneven[0]} has {sizes[uneven[0]]} items, which do not split "
                         f"evenly over {nprocs} ranks (drop_last=True in the loader, or a batch size divisible by "
                         f"{nprocs})")
    notes = []
    if mode == OWN:
        why = shared_order(descs["torch"], descs["paddle"])
        if why is None:
            mode = ORDERED
        else:
            notes.append(f"each side reads its own train loader in its own order ({why}): the curves are compared "
                         "as two samples of one random process (the independent band), and the two sides' batches "
                         "cannot be compared here (the data check, Step 2, compares the pipelines)")
    per_epoch = None if mode == GIVEN else descs[source]["batches"]
    if mode != GIVEN and per_epoch is None and cfg.train.epochs is not None:
        raise UsageError(f"{cfg.source}: [train] epochs needs a train split whose length is known: "
                         f"data_{source}('train') has no len(); give [train] steps")
    total = cfg.train.steps if cfg.train.steps is not None else cfg.train.epochs * per_epoch
    every = cfg.train.eval_every or per_epoch or max(1, total // EVALS_WITHOUT_EPOCHS)
    evals = tuple(sorted({*range(every, total, every), total}))
    return Plan(mode, total, per_epoch, evals, source, tuple(notes))
