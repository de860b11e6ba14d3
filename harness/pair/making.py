"""The pair's data side, run in the data worker (backends/data/runner.py) and nowhere else: the pair
module imported with both frameworks stood in, make_batch called there and each batch checked. So
the coordinator never runs a line of the pair's code: an import or a make_batch that hangs, starts a
process or crashes does so in a worker, under a deadline, in a process group the run ends.

Framework-free, and a leaf: the data worker imports it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from harness.errors import UsageError
from harness.pair import loader, stubs

WHERE = "data worker (which makes the data with numpy only)"
DATA_FUNCTIONS = ("data_torch", "data_paddle")  # the pair's own data, each made in its own worker


def answer(fn, *args) -> dict:
    """{"value": fn(*args)}, or the usage error it raised as {"error", "detail"} (exit 2 in the coordinator)."""
    try:
        return {"value": fn(*args)}
    except UsageError as exc:
        return {"error": str(exc), "detail": exc.detail}


class Maker:
    """The pair module of one config, and make_batch(rng, step) with a generator seeded [seed, step]."""

    def __init__(self, *, pair: str, source: str, seed: int, needed: list, readers: list = (),
                 data_only: bool = False):
        self.pair, self.source, self.seed, self.needed = Path(pair), source, seed, list(needed)
        self.readers = list(readers)  # the checks that read the labels (a built-in loss or metric)
        self.module = loader.load(self.pair, keep=None, where=WHERE)
        own = [n for n in DATA_FUNCTIONS if callable(getattr(self.module, n, None))]
        if len(own) == 1:
            other = next(n for n in DATA_FUNCTIONS if n not in own)
            raise UsageError(f"{self.pair}: the pair defines {own[0]} but not {other}: the data check compares the two")
        models = [] if data_only else ["build_torch", "build_paddle"]  # Step 2 needs no model
        loader.require(self.module, self.pair, models + ([] if own else ["make_batch"]))

    def defined(self) -> list:
        """The callables the module defines (as this process sees it, frameworks stood in)."""
        return sorted(name for name in dir(self.module) if callable(getattr(self.module, name, None)))

    def batch(self, step: int) -> dict:
        rng = np.random.default_rng([self.seed, step])
        where = f"{self.pair}: make_batch(rng, step={step})"
        try:
            batch = self.module.make_batch(rng, step)
        except Exception as exc:
            raise UsageError(f"{where} raised {type(exc).__name__}: {exc}", loader.user_traceback(exc)) from None
        if not isinstance(batch, dict) or not batch:
            raise UsageError(f"{where} must return a non-empty dict of numpy arrays, got {type(batch).__name__}")
        out = {}
        for key, value in batch.items():
            if stubs.is_absent(value) or not isinstance(value, (np.ndarray, np.generic)):
                raise UsageError(
                    f"{where} returned '{key}' as {type(value).__name__}; make_batch must return numpy "
                    "arrays (the data is made without torch or paddle)"
                )
            arr = np.ascontiguousarray(value)
            if arr.dtype == np.float64:
                # float64 inputs silently make torch compute in double and paddle in float32
                raise UsageError(f"{where} returned '{key}' as float64: use float32 (or cast explicitly)")
            if arr.dtype.hasobject:
                raise UsageError(f"{where} returned '{key}' as an object array: make_batch must return numbers")
            out[str(key)] = arr
        error = missing_keys(out, self.needed, self.readers, where, self.source)
        if error:
            raise UsageError(error)
        return out


def missing_keys(batch: dict, needed: list, readers: list, where: str, source) -> str | None:
    """What a batch lacks of the [data] inputs and labels keys, said as an error, or None."""
    missing = [k for k in needed if k not in batch]
    if not missing:
        return None
    why = f", which the {', '.join(readers)} check(s) read" if readers else ""
    return f"{where} returned keys {sorted(batch)}, but [data] inputs/labels name {missing}{why} (file {source})"
