"""The metric: the metric op (MetricOps, a mixin of backends/base.Runner) over streamed parts of an
eval split; each framework computes outputs, argmax and top-k, numpy only counts, identically for both."""

from __future__ import annotations

import numpy as np


def count_metric(kind: str, predictions: np.ndarray, labels: np.ndarray, k: int) -> dict:
    """Built-in metrics from each framework's predictions (float64, one value per key)."""
    if kind == "mse":
        return {"mse": np.float64(np.mean((predictions - labels.reshape(predictions.shape).astype(np.float64)) ** 2))}
    if predictions.shape[0] != labels.shape[0]:
        raise ValueError(f"{predictions.shape[0]} predictions for {labels.shape[0]} labels: the metric needs "
                         "one prediction per label (set [metric] output, or use kind = \"pair\")")
    if kind == "topk":
        return {f"top{k}_accuracy": np.float64(np.mean(np.any(predictions == labels[:, None], axis=1)))}
    if kind == "accuracy":
        return {"accuracy": np.float64(np.mean(predictions == labels))}
    if kind == "f1":
        classes = np.union1d(predictions, labels)
        scores = []
        for c in classes:
            tp = np.sum((predictions == c) & (labels == c))
            fp = np.sum((predictions == c) & (labels != c))
            fn = np.sum((predictions != c) & (labels == c))
            scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
        return {"f1_macro": np.float64(np.mean(scores))}
    raise ValueError(f"unknown metric kind '{kind}'")


class Evaluation:
    """The [metric] over batches given in any number of parts (a streamed eval split), computed
    over all of them at once at the end (macro F1 over every prediction, not a mean of per-batch
    F1s). The model is in eval mode; its forward runs without autograd where it can
    (Runner.eval_forward), the metric's arithmetic always."""

    def __init__(self, runner, metric: dict, label_key: str | None, with_loss: bool = False):
        self.runner, self.metric, self.label_key = runner, metric, label_key
        self.views, self.labels, self.per_batch = [], [], []
        self.count = 0
        self.with_loss = with_loss  # the loss of each batch too (the training run's eval loss)
        self.losses, self.sizes = [], []

    def add(self, batches: list, total: int | None = None) -> None:
        runner, kind = self.runner, self.metric["kind"]
        for batch in batches:
            t = runner.tensors(batch)
            output = runner.eval_forward(t)
            with runner.no_grad():
                if self.with_loss:
                    self.losses.append(float(runner.scalar(runner.run_loss(output, t))))
                    self.sizes.append(_rows(batch, self.label_key))
                if kind == "pair":
                    self.per_batch.append(_pair_values(runner, output, t))
                else:
                    self._predict(runner.first_tensor(output, self.metric["output"]), batch)
            self.count += 1
            if total:
                runner.progress(self.count, total)

    def _predict(self, out, batch: dict) -> None:
        kind, runner = self.metric["kind"], self.runner
        if kind == "mse":
            self.views.append(runner.to_numpy(out).astype(np.float64))
        elif kind == "topk":
            self.views.append(runner.to_numpy(runner.topk(out, self.metric["k"])))
        else:
            self.views.append(runner.to_numpy(runner.argmax(out)))
        self.labels.append(np.asarray(batch[self.label_key]))

    def result(self) -> dict:
        kind = self.metric["kind"]
        if not self.count:
            raise ValueError("no evaluation batches")
        if kind == "pair":
            return {k: np.float64(np.mean([m[k] for m in self.per_batch])) for k in self.per_batch[0]}
        views = self.views
        predictions = np.concatenate([v.reshape(len(v), -1) if kind == "topk" else v.reshape(-1) for v in views])
        return count_metric(kind, predictions, np.concatenate([lab.reshape(-1) for lab in self.labels]),
                            self.metric["k"])


    def loss(self) -> dict:
        """The mean loss over the batches, each weighted by its rows, and the per-batch losses."""
        losses, sizes = np.asarray(self.losses, np.float64), np.asarray(self.sizes, np.float64)
        return {"loss": np.float64(losses @ sizes / sizes.sum()) if sizes.sum() else np.float64(np.nan),
                "losses": losses, "sizes": sizes.astype(np.int64)}


def _rows(batch: dict, label_key: str | None) -> int:
    arr = batch[label_key] if label_key in batch else next(iter(batch.values()))
    return int(np.shape(arr)[0]) if np.ndim(arr) else 1


def evaluate(runner, batches: list, metric: dict, label_key: str | None) -> dict:
    """The [metric] over `batches` (see Evaluation)."""
    evaluation = Evaluation(runner, metric, label_key)
    evaluation.add(batches)
    return evaluation.result()


class MetricOps:
    """The metric op: the [metric] of the initial weights, a streamed eval split in parts. A mixin of
    backends/base.Runner."""

    def metric(self, batches: list, overrides: dict | None = None, begin: bool = True, end: bool = True,
               total: int | None = None) -> dict:
        """The metric of the initial weights over `batches`. A streamed eval split comes in parts,
        the first with `begin`, the last with `end` (only that one returns the metric); other ops
        may run between them, so each part starts from the initial weights again. `total`: the
        split's batches, for progress."""
        self._restore()
        if begin:
            self._evaluation = Evaluation(self, self._config(overrides)["metric"],
                                          next(iter(self.cfg["data"]["labels"]), None))
        elif self._evaluation is None:
            raise RuntimeError("a part of a streamed metric came without its first part")
        self.set_train(self.model, False)
        self._evaluation.add(batches, total)  # each forward without autograd where it can (eval_forward)
        if not end:
            return {"batches": self._evaluation.count}
        evaluation, self._evaluation = self._evaluation, None
        return evaluation.result()

    def _evaluate(self, batches: list, metric: dict) -> dict:
        self.set_train(self.model, False)
        return evaluate(self, batches, metric, next(iter(self.cfg["data"]["labels"]), None))


def _number(value, key: str, source: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"metric '{key}' of {source} is a {type(value).__module__}.{type(value).__qualname__}, "
                        "expected a number or a one-element tensor") from None


def _pair_values(runner, output, t: dict) -> dict:
    fn = runner.pair_fn("metric")
    if fn is None:
        raise ValueError(f"[metric] kind = \"pair\" but the pair module defines no metric_{runner.framework}")
    return {k: _number(v, k, fn.__name__) for k, v in fn(output, t).items()}
