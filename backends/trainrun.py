"""The training run in a worker: the train check with [train] epochs or steps, driven chunk by chunk
by harness/trainrun/. The model trains from the initial weights (or a kept state) with the
framework's own optimizer and schedule, in train mode, on batches given (make_batch's, or a
[data] source side's), collated from this side's own dataset at given index lists (the order the
reference's sampler drew), or read from its own train split; it evaluates on its eval split (the
loss and the metric) and keeps its whole training state in a file at each evaluation. Dropout
takes its masks from backends/masks.py. A mixin of backends/base.Runner, over the primitives.

Every pass over the train split (one per epoch) is seeded from the run seed and the epoch
(harness/workers/protocol.epoch_seed, as the coordinator seeds a source side's), and the model's own generators from
the run seed and the step at each evaluation: a run resumed from a kept evaluation draws what the
uninterrupted run drew after it."""

from __future__ import annotations

import contextlib
import os
import random
import types

import numpy as np

from backends.masks import SharedMasks
from backends.metrics import Evaluation
from backends.pairdata import calling
from harness.safety.safeload import load_npy_dict
from harness.workers.protocol import epoch_seed, shard_rows


def step_seed(seed: int, step: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(step)]).generate_state(1)[0] % (2 ** 31))


class Pass:
    """A pass over one split of this side's own data: its batches as read from the pair's object
    (a loader's own order), or collated from its dataset at given index lists; its generators kept
    from batch to batch (harness pairdata's, not the split's own: the data check's passes stay apart)."""

    def __init__(self, runner, split: str, seed: int, *, ordered: bool):
        self.runner, self.s, self.seed = runner, runner._split(split), seed
        self.kept = types.SimpleNamespace(rng=None)  # the generators' state between batches
        self.read = 0
        self.it = None
        if not ordered:
            with runner._data_rng(self.kept, fresh=True, seed=seed), calling(self.s.where):
                self.it = runner._restart(self.s)

    def next(self, indices: list | None = None) -> dict | None:
        """The next batch (from the split's own order, or its items at `indices`); None at its end."""
        where = f"{self.s.where} batch {self.read}"
        with self.runner._data_rng(self.kept, fresh=self.kept.rng is None, seed=self.seed), calling(where):
            if indices is None:
                batch = next(self.it, None)
            else:
                return self._count(next(self.runner._collated(self.s, [indices], stacked=self.s.kind == "dataset")))
        return None if batch is None else self._count(self.runner.data_fields(batch, where))

    def _count(self, fields: dict) -> dict:
        self.read += 1
        return fields


class Run:
    """A training run under way in this worker: the optimizer, the steps done, the pass and its place."""

    def __init__(self, stepper, masks: SharedMasks | None, *, parallel: bool, rank: int, nprocs: int):
        self.stepper, self.masks, self.parallel, self.rank, self.nprocs = stepper, masks, parallel, rank, nprocs
        self.step, self.epoch = 0, 0
        self.passing: Pass | None = None


class RunOps:

    def run_begin(self, total_steps: int, overrides: dict | None = None, kept: str | None = None,
                  masks: dict | None = None, parallel: bool = False, rank: int = 0, nprocs: int = 1,
                  moments: bool = True, weights: dict | None = None) -> dict:
        """A training run from the initial weights, or from a kept evaluation's file (`kept`): the
        model, the optimizer and schedule (without `moments`, each parameter's optimizer state
        afresh), the step and the epoch; then `weights` (the other side's there, converted, with the
        arguments of Session.to_paddle) where given. masks: this side's Dropout module names -> their
        sites (dropout masks shared with the other side), None: each draws its own."""
        if parallel and self._parallel is None:
            self._parallel = self.data_parallel(self.model)
            self.progress(0, 1)  # joined: from here on the coordinator times a step, not start-up
        self._restore()
        self._dirty = True
        stepper = self.make_stepper(self.model, self._config(overrides), total_steps)
        shared = SharedMasks(self.cfg["data"]["seed"], rank, masks) if masks is not None else None
        run = self._run = Run(stepper, shared, parallel=parallel, rank=rank, nprocs=nprocs)
        position = 0
        if kept is not None:
            state = load_npy_dict(kept)
            self.load_state(self.model, {k: np.asarray(v) for k, v in state["model"].items()})
            stepper.load(state["optimizer"], moments=moments)
            run.step, run.epoch, position = int(state["step"]), int(state["epoch"]), int(state["position"])
        if weights is not None:
            self.load_state(self.model, self.pair.torch_to_paddle(dict(weights["state"])) if weights["raw"]
                            else dict(weights["state"]))
        self.set_train(self.model, True)
        self._reseed(run.step)
        return {"step": run.step, "epoch": run.epoch, "position": position}

    def run_order(self, epoch: int) -> dict:
        """The train split's batches in `epoch` as index lists (flat, with each batch's size), as its
        loader's batch sampler draws them (or a dataset's, in order)."""
        lists = self._index_lists(self._split("train"), seed=epoch_seed(self.cfg["data"]["seed"], epoch))
        if lists is None:
            raise ValueError("the train split has no batch sampler to read an order from")
        return {"indices": np.asarray([i for idx in lists for i in idx], np.int64),
                "sizes": np.asarray([len(idx) for idx in lists], np.int64)}

    def run_steps(self, count: int, total: int, epoch: int = 0, batches: list | None = None,
                  indices: list | None = None, skip: int = 0) -> dict:
        """`count` training steps on the batches given, on this side's items at the index lists given
        (this rank's part of each, in `epoch`), or on the next batches of its own pass (this rank's
        rows of each; begun in `epoch`, a pass that ends starts the next epoch's). skip: batches of
        the own pass to read past first (a run resumed inside an epoch)."""
        run = self._run
        if run is None:
            raise RuntimeError("'run_steps' before 'run_begin'")
        losses, lrs = [], []
        self._forward_model = self._parallel if run.parallel else None
        masking = self.dropout_shared(self.model, run.masks) if run.masks is not None else contextlib.nullcontext()
        try:
            with masking:
                for i in range(count):
                    batch = self._next_batch(run, epoch, batches, indices, i, skip)
                    if run.masks is not None:
                        run.masks.begin(run.step)
                    loss, lr = self._train_step(run, batch)
                    losses.append(loss)
                    lrs.append(lr)
                    self.progress(run.step, total)
        finally:
            self._forward_model = None
        unshared = run.masks.unshared if run.masks is not None else 0
        if run.masks is not None:
            run.masks.unshared = 0
        return {"loss": np.asarray(losses, np.float64), "lr": np.asarray(lrs, np.float64), "step": run.step,
                "epoch": run.epoch, "read": run.passing.read if run.passing else 0, "unshared": unshared}

    def _next_batch(self, run: Run, epoch: int, batches, indices, i: int, skip: int) -> dict:
        if batches is not None:
            return batches[i]
        seed = self.cfg["data"]["seed"]
        if indices is not None:  # the coordinator's epochs: a new order begins a new pass
            if run.passing is None or run.epoch != epoch:
                run.epoch, run.passing = epoch, Pass(self, "train", epoch_seed(seed, epoch), ordered=True)
            return run.passing.next(list(indices[i]))
        if run.passing is None:  # this side's own epochs, from where the run began
            run.epoch, run.passing = epoch, Pass(self, "train", epoch_seed(seed, epoch), ordered=False)
            for _ in range(skip):
                run.passing.next()
        batch = run.passing.next()
        if batch is None:  # this side's epoch ended inside the chunk: its next one continues it
            run.epoch += 1
            run.passing = Pass(self, "train", epoch_seed(seed, run.epoch), ordered=False)
            batch = run.passing.next()
            if batch is None:
                raise ValueError(f"{run.passing.s.where} yields no batch")
        return shard_rows(batch, run.rank, run.nprocs) if run.nprocs > 1 else batch

    def _train_step(self, run: Run, batch: dict) -> tuple:
        t = self.tensors(batch)
        loss = self.run_loss(self.run_forward(t), t)
        value = self.scalar(loss)
        lr = run.stepper.lr()
        self.between_kernels()
        self.backward(loss)
        self.between_kernels()
        run.stepper.step(float(value))
        run.stepper.zero_grad()
        run.step += 1
        return float(value), lr

    def run_eval(self, batches: list | None = None, begin: bool = True, end: bool = True) -> dict:
        """The loss and the [metric] of the model now, in eval mode, over the batches given (in parts:
        `begin` on the first, `end` on the last) or over this side's whole eval split."""
        run = self._run
        if begin:
            self._run_eval = Evaluation(self, self.cfg["metric"], next(iter(self.cfg["data"]["labels"]), None),
                                        with_loss=True)
        evaluation = self._run_eval
        self.set_train(self.model, False)
        try:
            if batches is not None:
                evaluation.add(batches)
            else:
                own = Pass(self, "eval", self.cfg["data"]["seed"], ordered=False)
                while (batch := own.next()) is not None:
                    evaluation.add([batch])
        finally:
            self.set_train(self.model, True)
        if not end:
            return {"batches": evaluation.count}
        self._run_eval = None
        if run is not None:
            self._reseed(run.step)  # what is drawn after an evaluation does not depend on it
        return {**evaluation.loss(), "metric": evaluation.result(), "batches": evaluation.count}

    def run_keep(self, path: str) -> dict:
        """The whole training state into `path` (written beside it, then renamed): the model, the
        optimizer and schedule, the step, the epoch and the batches of it read."""
        run = self._run
        state = {"model": self.snapshot(self.state_tensors(self.model)), "optimizer": self.plain(run.stepper.state()),
                 "step": run.step, "epoch": run.epoch, "position": run.passing.read if run.passing else 0,
                 "framework": self.framework}
        partial = f"{path}.partial-{os.getpid()}"
        try:
            with open(partial, "wb") as f:
                np.save(f, np.array(state, dtype=object), allow_pickle=True)
            os.replace(partial, path)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(partial)
        return {"path": path, "bytes": os.path.getsize(path)}

    def _reseed(self, step: int) -> None:
        seed = step_seed(self.cfg["data"]["seed"], step)
        random.seed(seed)
        np.random.seed(seed)
        self.seed_all(seed)
