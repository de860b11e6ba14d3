"""The metric check's arithmetic: each framework computes outputs, argmax and top-k; numpy only
counts, identically for both."""

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


def evaluate(runner, batches: list, metric: dict, label_key: str | None) -> dict:
    """The [metric] over all batches at once (macro F1 over every prediction, not a mean of
    per-batch F1s). The model is in eval mode; its forward runs without autograd where it can
    (Runner.eval_forward), the metric's arithmetic always."""
    kind = metric["kind"]
    if kind == "pair":
        return _pair_metric(runner, batches)
    views, labels = [], []
    for batch in batches:
        out = runner.first_tensor(runner.eval_forward(runner.tensors(batch)), metric["output"])
        with runner.no_grad():
            if kind == "mse":
                views.append(runner.to_numpy(out).astype(np.float64))
            elif kind == "topk":
                views.append(runner.to_numpy(runner.topk(out, metric["k"])))
            else:
                views.append(runner.to_numpy(runner.argmax(out)))
        labels.append(np.asarray(batch[label_key]))
    if not views:
        raise ValueError("no evaluation batches")
    predictions = np.concatenate([v.reshape(len(v), -1) if kind == "topk" else v.reshape(-1) for v in views])
    return count_metric(kind, predictions, np.concatenate([lab.reshape(-1) for lab in labels]), metric["k"])


def _number(value, key: str, source: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"metric '{key}' of {source} is a {type(value).__module__}.{type(value).__qualname__}, "
                        "expected a number or a one-element tensor") from None


def _pair_metric(runner, batches: list) -> dict:
    fn = runner.pair_fn("metric")
    if fn is None:
        raise ValueError(f"[metric] kind = \"pair\" but the pair module defines no metric_{runner.framework}")
    per_batch = []
    for batch in batches:
        t = runner.tensors(batch)
        output = runner.eval_forward(t)
        with runner.no_grad():
            per_batch.append({k: _number(v, k, fn.__name__) for k, v in fn(output, t).items()})
    return {k: np.float64(np.mean([m[k] for m in per_batch])) for k in per_batch[0]}
