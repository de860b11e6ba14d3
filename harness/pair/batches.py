"""The coordinator's data: every batch made once, from the run seed, and shared by both sides.

The pair's make_batch runs in a data worker of its own (harness/pair/making.py in
backends/data/runner.py), never in the coordinator: so the pair module's import and make_batch
run under the deadlines every worker has (the import and the first batch within
--startup-timeout, every later batch within --timeout), a hang shows the stack it hung at, and
whatever they start ends with the run (a process group, and the tree below the worker)."""

from __future__ import annotations

import numpy as np

from harness.config.schema import RunConfig
from harness.errors import UsageError
from harness.pair.making import DATA_FUNCTIONS, missing_keys
from harness.workers.process import WorkerGroup, WorkerSpec
from harness.workers.protocol import DataOp, Request, SharedArray

DATA = "data"  # the data worker's name in messages: "data worker: no answer to ..."
STARTUP_HINT = "start-up; raise --startup-timeout if that is just slow"
BATCH_HINT = "raise --timeout if make_batch is just slow"
# The held-out evaluation batches of the train check are make_batch(rng, step) at these steps.
HELDOUT_STEP = 1_000_000


class BatchSource:
    """make_batch(rng, step) of the pair, each step with its own generator so a batch does not
    depend on which checks ran before it. The data worker starts on first use; close() (or the end
    of a `with` block) ends it, and the batches made stay."""

    def __init__(self, cfg: RunConfig, *, timeout: float = 900.0, startup_timeout: float = 900.0):
        self.cfg = cfg
        self.timeout, self.startup_timeout = timeout, startup_timeout
        self._group: WorkerGroup | None = None
        self._defined: list | None = None
        self._cache: dict[int, dict] = {}

    def start(self) -> None:
        """The data worker up and the pair module imported there (a usage error if it fails)."""
        if self._group is not None:
            return
        self._group = WorkerGroup([WorkerSpec(DATA, {"threads": 1}, framework=DATA)], self.timeout)
        self._group.start()
        wire = {"pair": str(self.cfg.pair), "source": str(self.cfg.source), "seed": self.cfg.data.seed,
                "needed": self._needed(), "readers": list(self.cfg.label_readers),
                "data_only": set(self.cfg.checks) <= {"data"}}  # Step 2 needs no model
        self._defined = self._ask(DataOp.LOAD_PAIR, wire, f"import of {self.cfg.pair.name}", self.startup_timeout,
                                  STARTUP_HINT)

    def _needed(self) -> list:
        return list(self.cfg.data.inputs or []) + (list(self.cfg.data.labels) if self.cfg.label_readers else [])

    def defines(self, name: str) -> bool:
        """Whether the pair module defines a function `name` (as the data worker loads it, stubbed)."""
        self.start()
        return name in self._defined

    @property
    def defines_data(self) -> bool:
        """The pair brings its own data (data_torch and data_paddle: the data worker insists on both)."""
        return all(self.defines(name) for name in DATA_FUNCTIONS)

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
        """A batch of the pair's own data holds every [data] inputs and labels key (make_batch's
        are checked as the data worker makes them)."""
        error = missing_keys(batch, self._needed(), self.cfg.label_readers, where, self.cfg.source)
        if error:
            raise UsageError(error)

    def heldout(self) -> list:
        """The train check's held-out batches: make_batch at steps no training step uses."""
        return self.batches(range(HELDOUT_STEP, HELDOUT_STEP + self.cfg.data.eval_batches))

    def batch(self, step: int, keep: bool = True) -> dict:
        """make_batch's batch of `step`, kept for the run unless `keep` is false (a training run's
        thousands of steps: each made when its turn comes, then let go)."""
        if step not in self._cache:
            self.start()
            first = not self._cache  # made at start-up, and it may warm the pair's own caches
            made = self._ask(DataOp.MAKE_BATCH, {"step": step}, f"make_batch(step={step})",
                             self.startup_timeout if first else self.timeout, STARTUP_HINT if first else BATCH_HINT)
            if not keep:
                return made
            self._cache[step] = made
        return self._cache[step]

    def batches(self, steps) -> list:
        return [self.batch(s) for s in steps]

    def close(self) -> None:
        if self._group is not None:
            self._group.close()
            self._group = None

    def __enter__(self) -> BatchSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _ask(self, op: DataOp, kwargs: dict, label: str, timeout: float, hint: str):
        reply = self._group.call({DATA: Request(op, kwargs)}, timeout=timeout, hint=hint, label=label)[DATA]
        if "error" in reply:
            raise UsageError(reply["error"], reply["detail"])
        return _arrays(reply["value"])


def _arrays(value):
    """A batch's large arrays come through shared memory: read into the coordinator's own memory,
    since a batch is sliced into shards and kept for the run (its file goes with the handle)."""
    if isinstance(value, SharedArray):
        return np.array(value.load())
    if isinstance(value, dict):
        return {k: _arrays(v) for k, v in value.items()}
    return value
