"""The data check (the guide's data checkpoints, Step 2): each side's own data, data_torch(split)
against data_paddle(split), for the train and the eval split: dataset lengths, numbers of
batches and each batch's size, the items at seeded indices (the first and the last among them)
and the first batches of each pass, field by field. A loader that shuffles is compared on what
its order leaves defined, and the report says what that was."""

from __future__ import annotations

import numpy as np

from harness.checks.common import check
from harness.checks.datadiff import count_reason, judge_field, listing, sizes_reason
from harness.config.schema import SPLITS
from harness.verdict.diff import CheckResult, KeyResult
from harness.verdict.keys import value
from harness.verdict.tolerance import Tolerance
from harness.workers.protocol import Op


@check
def data(session) -> CheckResult:
    cfg = session.cfg.data
    result, ref, other = CheckResult("data"), {}, {}
    for split in SPLITS:
        desc = yield session.for_both(Op.DATA_OPEN, split=split, batches=cfg.batches)
        t, p = desc["torch"], desc["paddle"]
        judged = Judged(session, split, result, ref, other)
        judged.meta(t, p)
        indices = item_indices(t, p, count=cfg.items, seed=cfg.seed, split=split)
        if indices:
            items = yield session.for_both(Op.DATA_ITEMS, split=split, indices=indices)
            for i in indices:
                judged.fields(f"item_{i}", items["torch"][str(i)], items["paddle"][str(i)])
        elif cfg.items:
            result.notes.append(f"{split}: {_no_items(t, p)}")
        how, note = batch_plan(t, p)
        if note:
            result.notes.append(f"{split}: {note}")
        if how is not None and cfg.batches:
            kwargs = {"start": 0, "count": cfg.batches} if how == "pass" else {"indices": t["order"]}
            out = yield session.for_both(Op.DATA_BATCHES, split=split, **kwargs)
            judged.batches(out["torch"], out["paddle"], asked=cfg.batches)
        judged.field_names_note()
    session.writer.check(result, ref, other)
    return result


class Judged:
    """One split's keys, added to the check's result and to each side's arrays as they are judged."""

    def __init__(self, session, split: str, result: CheckResult, ref: dict, other: dict):
        self.session, self.split, self.result, self.ref, self.other = session, split, result, ref, other
        self.names = {"torch": [], "paddle": []}  # field names seen on each side, in order

    def tolerance(self, name: str) -> Tolerance:
        return self.session.cfg.tolerance.for_key("data", name)

    def add(self, name: str, a, b, shapes: dict | None = None) -> KeyResult:
        name = f"{self.split}.{name}"
        key = judge_field(name, a, b, self.tolerance(name), shapes)
        self.result.keys.append(key)
        if a is not None:
            self.ref[value(name)] = np.asarray(a)
        if b is not None:
            self.other[value(name)] = np.asarray(b)
        return key

    def meta(self, t: dict, p: dict) -> None:
        """Dataset lengths, numbers of batches and batch sizes, where both sides know them."""
        if t["length"] is not None and p["length"] is not None:
            key = self.add("length", np.int64(t["length"]), np.int64(p["length"]))
            if not key.passed:
                key.reason = f"{t['length']} items vs {p['length']}"
        if t["batches"] is not None and p["batches"] is not None:
            key = self.add("batches", np.int64(t["batches"]), np.int64(p["batches"]))
            if not key.passed:
                key.reason = count_reason(t, p)
            elif t["sizes"] is not None and p["sizes"] is not None:
                key = self.add("batch_sizes", np.asarray(t["sizes"]), np.asarray(p["sizes"]))
                if not key.passed:
                    key.reason = sizes_reason(t, p)
        else:
            bare = [f"{side}'s {d['type']}" for side, d in (("torch", t), ("paddle", p)) if d["batches"] is None]
            self.result.notes.append(f"{self.split}: numbers of batches not compared: {' and '.join(bare)} has no len()")

    def fields(self, label: str, a: dict, b: dict, shapes: dict | None = None) -> None:
        self.names["torch"] += [n for n in a if n not in self.names["torch"]]
        self.names["paddle"] += [n for n in b if n not in self.names["paddle"]]
        for name in list(a) + [n for n in b if n not in a]:
            self.add(f"{label}.{name}", a.get(name), b.get(name), (shapes or {}).get(name))

    def batches(self, t: dict, p: dict, *, asked: int) -> None:
        tb, pb = t["batches"], p["batches"]
        shapes = {name: {"torch": [np.shape(b.get(name)) for b in tb], "paddle": [np.shape(b.get(name)) for b in pb]}
                  for name in {n for b in tb + pb for n in b}}
        for i, (a, b) in enumerate(zip(tb, pb)):
            self.fields(f"batch_{i}", a, b, shapes)
        for side, mine, theirs in (("torch", tb, pb), ("paddle", pb, tb)):
            if len(mine) < len(theirs):
                for i in range(len(mine), len(theirs)):
                    self.result.keys.append(KeyResult(id=value(f"{self.split}.batch_{i}"), passed=False,
                                                      reason=f"{side}'s pass ended after {len(mine)} batches"))
        if max(len(tb), len(pb)) < asked:
            self.result.notes.append(f"{self.split}: {max(len(tb), len(pb))} batches compared of the {asked} asked "
                                     "([data] batches): the passes have no more")

    def field_names_note(self) -> None:
        t, p = self.names["torch"], self.names["paddle"]
        if t and p and set(t) != set(p):
            hint = (": name the positions of a tuple with [data] fields = [...]"
                    if any(n.isdigit() for n in t + p) else "")
            self.result.notes.append(f"{self.split}: torch's fields are {listing(t)}; paddle's are {listing(p)}{hint}")


def item_indices(t: dict, p: dict, *, count: int, seed: int, split: str) -> list:
    """Seeded indices within both datasets, the first and the last among them."""
    if t["length"] is None or p["length"] is None or t["kind"] == "iterable" or p["kind"] == "iterable" or count < 1:
        return []
    n = min(t["length"], p["length"])
    if n <= count:
        return list(range(n))
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    middle = rng.choice(np.arange(1, n - 1), size=max(count - 2, 0), replace=False)
    return sorted({0, n - 1, *map(int, middle)})[:count] if count > 1 else [0]


def batch_plan(t: dict, p: dict) -> tuple:
    """How the batches are compared: ("pass", note) in each side's own order; ("collate", note)
    as each side collates the same items (the torch sampler's first index lists) when an order
    is random; (None, note) when neither can be."""
    to, po = t["order"], p["order"]
    random = [side for side, d in (("torch", t), ("paddle", p)) if d["sequential"] is False]
    samplers = ", ".join(d["sampler"] for d in (t, p) if d["sequential"] is False)
    whose = " and ".join(f"{side}'s" for side in random)
    drawn = f"{whose} {'loaders draw their' if len(random) > 1 else 'loader draws its'} items in a random order ({samplers})"
    if to is not None and po is not None and to[:len(po)] == po[:len(to)]:
        return "pass", None  # the same items in the same batches (one side may have fewer)
    if to is None or po is None:
        if random:
            return None, (f"batches not compared: {drawn}, and the other side's data has no sampler and "
                          "dataset to draw the same items with")
        return "pass", None
    if random:
        return "collate", (f"{drawn}: batches compared as each side's collate_fn makes them from the same items "
                           "(the first batches torch's sampler drew); the order itself, which each framework's "
                           "seed decides, was not compared")
    return "collate", ("the loaders' samplers group the items differently: batches compared as each side's "
                       "collate_fn makes them from the same items (torch's first batches)")


def _no_items(t: dict, p: dict) -> str:
    bare = [f"{side}'s {d['type']}" for side, d in (("torch", t), ("paddle", p)) if d["length"] is None]
    if not bare:
        return "items not compared: the datasets are empty"
    return (f"dataset lengths and items not compared: {' and '.join(bare)} {'is an iterable' if len(bare) == 1 else 'are iterables'} "
            "of batches, with no dataset to read items from")
