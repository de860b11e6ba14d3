"""How a parameter after training is judged: by what training did to it. Its update over the
steps (after - before, both sides from the same initial weights) must agree between the
frameworks relative to the update's own size, whatever the size of the weight.

A fixed bound on the values cannot see an optimizer difference: a weight decay of 1e-4 under
SGD (AlexNet at lr 0.00125) changes each step by about one float32 ulp of the weight, so after 5
steps the parameters differ by 4e-8, far under 1e-6, while the updates differ by 1-5 %. In
correct ports the updates agree to 1e-6 (SGD, momentum) .. 3e-5 (Adam) of their size; where
float32 cannot tell round-off from a difference, float64 arbitration decides (rules.py).
"""

from __future__ import annotations

import numpy as np

from harness.verdict.diff import CHUNK, ULP_FLOOR, KeyResult, fmt
from harness.verdict.keys import Kind
from harness.verdict.tolerance import ToleranceConfig

# A parameter passes when mean |d| <= UPDATE_RTOL x mean |update| and max |d| <= MAX_RATIO x that
# limit (a few wrong elements among many right ones: epsilon on small gradients, clipping). The
# max limit is at least diff's 8-ulp floor of the largest value: an element that rounds to the
# neighbouring float32 in one framework is no difference of the update (the mean has no floor:
# a decay of one ulp per step is a difference).
UPDATE_RTOL = 1e-4
MAX_RATIO = 100


def judge_params(result, ref: dict, other: dict, initial: dict, tolerances) -> None:
    """Re-judge every compared parameter key with a known initial value by its update. A key a
    `[tolerance]` pattern names keeps the absolute limit the user gave it."""
    for key in result.keys:
        if key.id.kind is not Kind.PARAM or key.mean_abs is None or key.nonfinite or key.id.name not in initial:
            continue
        if isinstance(tolerances, ToleranceConfig) and tolerances.pattern_for(str(key.id)) is not None:
            continue
        size, largest = update_size(ref[key.id], initial[key.id.name])
        mean_limit, max_limit = limits(size, largest, np.asarray(ref[key.id]).dtype)
        decide(key, key.mean_abs, key.max_abs, size, mean_limit, max_limit)


def update_size(after, before, keep=None) -> tuple:
    """(mean |after - before|, max |after|) in float64, chunk by chunk, over the `keep` elements."""
    a, b = np.asarray(after).reshape(-1), np.asarray(before).reshape(-1)
    mask = None if keep is None else np.asarray(keep).reshape(-1)
    total, count, largest = 0.0, 0, 0.0
    for start in range(0, a.size, CHUNK):
        x = a[start:start + CHUNK].astype(np.float64)
        y = b[start:start + CHUNK].astype(np.float64)
        if mask is not None:
            x, y = x[mask[start:start + CHUNK]], y[mask[start:start + CHUNK]]
        if x.size:
            total += float(np.abs(x - y).sum())
            count += x.size
            largest = max(largest, float(np.abs(x).max()))
    return (total / count if count else 0.0), largest


def limits(size: float, largest: float, dtype) -> tuple:
    """(mean limit, max limit) for a parameter whose torch update has mean magnitude `size`."""
    mean_limit = UPDATE_RTOL * size
    return mean_limit, max(MAX_RATIO * mean_limit, ULP_FLOOR.get(np.dtype(dtype), 0.0) * largest)


def decide(key: KeyResult, mean_abs: float, max_abs: float, size: float, mean_limit: float, max_limit: float) -> None:
    key.threshold, key.max_threshold, key.update, key.floored = mean_limit, max_limit, size, None
    key.note = f"limits from its update: {UPDATE_RTOL:g} of mean |after - before| {fmt(size)}"
    reasons = []
    if mean_abs > mean_limit:
        reasons.append(f"mean |d| {fmt(mean_abs)} is {mean_abs / size:.2g} of its mean update {fmt(size)} (limit "
                       f"{UPDATE_RTOL:g})" if size else f"torch did not move it, paddle did (mean |d| {fmt(mean_abs)})")
    if max_abs > max_limit:
        reasons.append(f"max |d| {fmt(max_abs)} at {key.worst_index} > {fmt(max_limit)}")
    key.passed = not reasons
    key.reason = ("its update differs: " + "; ".join(reasons)) if reasons else ""
