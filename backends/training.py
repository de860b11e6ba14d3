"""The worker's training: steps from the initial weights with the framework's own optimizer and
schedule, per-step losses and learning rates, then the parameters and last gradients, or the
metric of the trained model. A mixin of backends/base.Runner, over the framework primitives."""

from __future__ import annotations

import contextlib

import numpy as np


class TrainOps:
    def train(self, batches: list, mode: str, total_steps: int, overrides: dict | None = None,
              eval_batches: list | None = None, parallel: bool = False) -> dict:
        """Steps from the initial weights; per-step loss and lr, final params and last grads, and
        with eval_batches the metric of the trained model. parallel: this process is one rank of
        a DataParallel group and batches are its shards (the framework averages the gradients)."""
        if parallel and self._parallel is None:
            self._parallel = self.data_parallel(self.model)
            self.progress(0, len(batches))  # joined: from here on the coordinator times a step, not start-up
        self._forward_model = self._parallel if parallel else None
        try:
            result, grads = self._steps(batches, mode, self._config(overrides), total_steps)
        finally:
            self._forward_model = None
        if eval_batches is None:
            result.update(params=self.export(self.param_tensors(self.model)), grads=grads)
        else:
            trainable = set(self.param_tensors(self.model))
            buffers = {k: t for k, t in self.state_tensors(self.model).items() if k not in trainable}
            result["buffers"] = self.snapshot(buffers)
            result["metric"] = self._evaluate(eval_batches, self.cfg["metric"])
        return result

    def _steps(self, batches: list, mode: str, cfg: dict, total_steps: int) -> tuple:
        self._restore()
        self._dirty = True
        self.set_train(self.model, mode == "train")
        if mode != "train":
            self.allow_backward_in_eval(self.model)
        stepper = self.make_stepper(self.model, cfg, total_steps)
        losses, lrs, grads = [], [], {}
        with self.dropout_off(self.model) if mode == "train" else contextlib.nullcontext():
            for i, batch in enumerate(batches):
                t = self.tensors(batch)
                loss = self.run_loss(self.run_forward(t), t)
                losses.append(self.scalar(loss))
                lrs.append(stepper.lr())
                self.between_kernels()
                self.backward(loss)
                self.between_kernels()
                if i == len(batches) - 1:  # before clipping and the update change them in place
                    grads = self.stash(self.grad_tensors(self.model), worker_owned=False)
                stepper.step(float(losses[-1]))
                stepper.zero_grad()
                self.progress(i + 1, len(batches))
        result = {"loss": np.stack(losses) if losses else np.zeros(0, np.float32), "lr": np.asarray(lrs, np.float64),
                  "decay": stepper.decay}
        return result, grads
