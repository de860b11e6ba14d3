"""The data worker: a process of its own for the pair's make_batch (harness/pair/making.py), with
both frameworks stood in. Served by the same loop as the framework workers (backends/worker.py),
so it has their parent-death signal, process group, guardian, deadlines and crash stacks."""

from __future__ import annotations

from harness.pair.making import Maker, answer
from harness.workers.protocol import DataOp


class Runner:
    def __init__(self, options: dict):
        self.maker: Maker | None = None
        self.progress = lambda done, total: None  # set by the worker loop; make_batch reports none
        self.between_kernels = lambda: None

    def set_threads(self, count: int) -> None:
        """No thread pool to size: numpy's own, as the environment set it."""

    def handle(self, op: str, kwargs: dict) -> dict:
        if DataOp(op) is DataOp.LOAD_PAIR:
            return answer(self._load, kwargs)
        if self.maker is None:
            raise RuntimeError(f"'{op}' before 'load_pair'")
        return answer(self.maker.batch, kwargs["step"])

    def _load(self, kwargs: dict) -> list:
        self.maker = Maker(**kwargs)
        return self.maker.defined()
