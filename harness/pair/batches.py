"""The coordinator's data: every batch made once, from the run seed, and shared by both sides."""

from __future__ import annotations

import functools

import numpy as np

from harness.config.schema import RunConfig
from harness.errors import UsageError
from harness.pair import loader, stubs

WHERE = "coordinator (which makes the data with numpy only)"


class BatchSource:
    """make_batch(rng, step) of the pair, each step with its own generator so a batch does not
    depend on which checks ran before it."""

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self._guard = functools.partial(stubs.absent, loader.blocked_roots(None), WHERE)
        module = loader.load(cfg.pair, keep=None, where=WHERE, guard=self._guard)
        loader.require(module, cfg.pair, ["build_torch", "build_paddle", "make_batch"])
        self._make = module.make_batch
        self._module = module
        self._cache: dict[int, dict] = {}

    def defines(self, name: str) -> bool:
        """Whether the pair module defines a function `name` (as the coordinator loads it, stubbed)."""
        return callable(getattr(self._module, name, None))

    def batch(self, step: int) -> dict:
        if step not in self._cache:
            self._cache[step] = self._call(step)
        return self._cache[step]

    def batches(self, steps) -> list:
        return [self.batch(s) for s in steps]

    def _call(self, step: int) -> dict:
        rng = np.random.default_rng([self.cfg.data.seed, step])
        where = f"{self.cfg.pair}: make_batch(rng, step={step})"
        try:
            with self._guard():
                batch = self._make(rng, step)
        except Exception as exc:
            raise UsageError(f"{where} raised {type(exc).__name__}: {exc}", loader.user_traceback(exc)) from None
        if not isinstance(batch, dict) or not batch:
            raise UsageError(f"{where} must return a non-empty dict of numpy arrays, got {type(batch).__name__}")
        out = {}
        for key, value in batch.items():
            if stubs.is_absent(value) or not isinstance(value, (np.ndarray, np.generic)):
                raise UsageError(
                    f"{where} returned '{key}' as {type(value).__name__}; make_batch must return numpy "
                    "arrays (the coordinator never loads torch or paddle)"
                )
            arr = np.ascontiguousarray(value)
            if arr.dtype == np.float64:
                # float64 inputs silently make torch compute in double and paddle in float32
                raise UsageError(f"{where} returned '{key}' as float64: use float32 (or cast explicitly)")
            out[str(key)] = arr
        self._check_keys(out, where)
        return out

    def _check_keys(self, batch: dict, where: str) -> None:
        needed = list(self.cfg.data.inputs or []) + (list(self.cfg.data.labels) if self.cfg.label_readers else [])
        missing = [k for k in needed if k not in batch]
        if missing:
            readers = f", which the {', '.join(self.cfg.label_readers)} check(s) read" if self.cfg.label_readers else ""
            raise UsageError(
                f"{where} returned keys {sorted(batch)}, but [data] inputs/labels name {missing}{readers}"
                f" (file {self.cfg.source})"
            )
