"""The coordinator's data: every batch made once, from the run seed, and shared by both sides."""

from __future__ import annotations

import functools

import numpy as np

from harness.config.schema import RunConfig
from harness.errors import UsageError
from harness.pair import loader, stubs

# The held-out evaluation batches of the train check are make_batch(rng, step) at these steps.
HELDOUT_STEP = 1_000_000
WHERE = "coordinator (which makes the data with numpy only)"
DATA_FUNCTIONS = ("data_torch", "data_paddle")  # the pair's own data, each made in its own worker


class BatchSource:
    """make_batch(rng, step) of the pair, each step with its own generator so a batch does not
    depend on which checks ran before it."""

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self._guard = functools.partial(stubs.absent, loader.blocked_roots(None), WHERE)
        module = loader.load(cfg.pair, keep=None, where=WHERE, guard=self._guard)
        self._module = module
        own = [n for n in DATA_FUNCTIONS if self.defines(n)]
        if len(own) == 1:
            other = next(n for n in DATA_FUNCTIONS if n not in own)
            raise UsageError(f"{cfg.pair}: the pair defines {own[0]} but not {other}: the data check compares the two")
        self.defines_data = bool(own)
        models = [] if set(cfg.checks) <= {"data"} else ["build_torch", "build_paddle"]  # Step 2 needs no model
        loader.require(module, cfg.pair, models + ([] if self.defines_data else ["make_batch"]))
        self._make = getattr(module, "make_batch", None)
        self._cache: dict[int, dict] = {}

    def checks(self) -> tuple:
        """The run's checks: the data check needs the pair's own data; only a default list drops it."""
        if "data" in self.cfg.checks and not self.defines_data:
            if self.cfg.checks_given:
                raise UsageError(f"{self.cfg.source}: checks name data, but {self.cfg.pair} defines no "
                                 "data_torch(split) and data_paddle(split) (see `reprod-harness init`)")
            return tuple(c for c in self.cfg.checks if c != "data")
        return self.cfg.checks

    @property
    def source(self) -> str:
        """Which batches the checks run on: [data] source, else make_batch where the pair has one."""
        chosen = self.cfg.data.source or ("make_batch" if self.defines("make_batch") else "torch")
        if chosen == "make_batch" and not self.defines("make_batch"):
            raise UsageError(f"{self.cfg.source}: [data] source = \"make_batch\" but {self.cfg.pair} defines no "
                             "make_batch(rng, step)")
        if chosen != "make_batch" and not self.defines_data:
            raise UsageError(f"{self.cfg.source}: [data] source = \"{chosen}\" takes the batches from "
                             f"data_{chosen}(split), which {self.cfg.pair} does not define")
        return chosen

    def evaluation(self):
        """The metric check's batches, in chunks (a loader's are streamed): here one chunk."""
        yield self.batches(range(self.cfg.data.eval_batches))

    def eval_count(self) -> None:
        return None  # a few batches: no progress counts

    def described(self, seen: int) -> str:
        return f"over {seen} batches of make_batch ([data] eval_batches)"

    def short(self, got: int, asked: int, what: str) -> None:
        return None  # make_batch makes every step asked for

    def check_keys(self, batch: dict, where: str) -> None:
        """The batch holds every [data] inputs and labels key (a batch of the pair's own data too)."""
        self._check_keys(batch, where)

    def heldout(self) -> list:
        """The train check's held-out batches: make_batch at steps no training step uses."""
        return self.batches(range(HELDOUT_STEP, HELDOUT_STEP + self.cfg.data.eval_batches))

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
        needed = list(self.cfg.data.inputs or []) + list(self.cfg.data.labels)
        missing = [k for k in needed if k not in batch]
        if missing:
            raise UsageError(
                f"{where} returned keys {sorted(batch)}, but [data] inputs/labels name {missing}"
                f" (file {self.cfg.source})"
            )
