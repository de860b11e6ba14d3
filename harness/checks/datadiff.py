"""The data check's judging, answer first: what each side's split is (length, batches, batch sizes)
and its fields compared exactly (integers, booleans, strings) or by the data tolerance (floats),
each failing key saying what the difference looks like: a padding or truncation length, a
dropped last batch, an offset, channels in another order. Pure: arrays in, KeyResults out."""

from __future__ import annotations

import numpy as np

from harness.verdict.diff import KeyResult, compare_arrays, fmt
from harness.verdict.keys import value
from harness.verdict.tolerance import Tolerance

SHOWN = 6  # names listed in a message before "..."


def judge_field(name: str, ref, other, tol: Tolerance, shapes: dict | None = None) -> KeyResult:
    """One field (or a count) of torch against paddle, its reason said the way a person reads it;
    `shapes`: the field's shape on each side in every batch compared (see shape_reason)."""
    key = value(name)
    if ref is None or other is None:
        return KeyResult(id=key, passed=False, reason=f"only in {'paddle' if ref is None else 'torch'}'s data")
    a, b = np.asarray(ref), np.asarray(other)
    res = compare_arrays(key, a, b, tol)
    if res.passed:
        return res
    if a.shape != b.shape:
        res.reason = shape_reason(a, b, shapes)
    elif a.dtype == b.dtype or a.dtype.kind in "US" and a.dtype.kind == b.dtype.kind:
        res.reason = value_reason(a, b, res.reason)
    return res


def _first_difference(a: np.ndarray, b: np.ndarray, differ: np.ndarray) -> str:
    if a.size == 1:
        return f"{_show(a.reshape(-1)[0])} vs {_show(b.reshape(-1)[0])}"
    where = tuple(int(i) for i in np.argwhere(differ)[0])
    return (f"{int(differ.sum())} of {a.size} values differ, first at {list(where)}: "
            f"{_show(a[where])} vs {_show(b[where])}")


def _show(x) -> str:
    if isinstance(x, (str, np.str_, bytes, np.bytes_)):
        return repr(str(x) if isinstance(x, np.str_) else x)
    if isinstance(x, (float, np.floating)):
        return fmt(float(x))
    return str(x.item() if hasattr(x, "item") else x)


def value_reason(a: np.ndarray, b: np.ndarray, plain: str) -> str:
    """Same shape and kind, different values: the first difference, an offset, or channels."""
    if a.dtype.kind in "US":
        return _first_difference(a, b, a != b)
    if a.dtype.kind in "iub":
        differ = a != b
        text = _first_difference(a, b, differ)
        d = b.astype(np.int64) - a.astype(np.int64)
        if a.size > 1 and differ.all() and (d == d.reshape(-1)[0]).all():
            text += f"; paddle = torch {int(d.reshape(-1)[0]):+d} in every value (an offset: off by one?)"
        return text
    return plain + _channels(a, b)


def _channels(a: np.ndarray, b: np.ndarray) -> str:
    """Images (.., C, H, W) whose difference sits in some channels only: per-channel constants
    (a normalize's mean and std) in another order on one side."""
    if a.ndim < 3 or not 1 < a.shape[-3] <= 4:
        return ""
    axes = tuple(i for i in range(a.ndim) if i != a.ndim - 3)
    per = np.abs(a.astype(np.float64) - b.astype(np.float64)).mean(axis=axes)
    scale = max(float(np.abs(a).mean()), 1e-12)
    agree = [c for c, d in enumerate(per) if d <= 1e-6 * scale + 1e-6]
    differ = [c for c in range(len(per)) if c not in agree]
    if not agree or not differ:
        return ""
    return (f"; channels {', '.join(map(str, differ))} differ (mean |d| {', '.join(fmt(per[c]) for c in differ)}), "
            f"{', '.join(map(str, agree))} agree{'s' if len(agree) == 1 else ''}: per-channel constants in another "
            "order (a normalize's mean/std)?")


def shape_reason(a: np.ndarray, b: np.ndarray, shapes: dict | None = None) -> str:
    """Different shapes along one axis: padding (the longer is the shorter plus one repeated value)
    or truncation (the longer agrees up to where the shorter stops); `shapes` is each side's shape
    of this field in every batch compared, to tell a fixed length from the longest in the batch."""
    text = f"shape {tuple(a.shape)} vs {tuple(b.shape)}"
    axes = [i for i in range(a.ndim) if a.ndim == b.ndim and a.shape[i] != b.shape[i]]
    if len(axes) != 1:
        return text
    ax = axes[0]
    (short_side, short), (long_side, long) = sorted((("torch", a), ("paddle", b)), key=lambda s: s[1].shape[ax])
    n = short.shape[ax]
    head = np.take(long, range(n), axis=ax)
    tail = np.take(long, range(n, long.shape[ax]), axis=ax)
    if head.shape == short.shape and np.array_equal(head, short) and tail.size and (tail == tail.reshape(-1)[0]).all():
        return f"{text}: {_padding(long_side, short_side, long.shape[ax], n, ax, shapes)} (padded with {_show(tail.reshape(-1)[0])})"
    agree = _agreeing_prefix(short, head, ax)
    if agree >= n - 1 and n > 1:
        return (f"{text}: the first {agree} positions agree, then {short_side}'s stops at {n}: {short_side} truncates "
                f"to {n} (a max length), {long_side} keeps {long.shape[ax]}")
    return text


def _agreeing_prefix(short: np.ndarray, head: np.ndarray, ax: int) -> int:
    if head.shape != short.shape:
        return 0
    same = np.moveaxis(short == head, ax, 0).reshape(short.shape[ax], -1).all(axis=1)
    return int(np.argmin(same)) if not same.all() else len(same)


def _padding(long_side: str, short_side: str, long_len: int, short_len: int, ax: int, shapes: dict | None) -> str:
    seen = {side: [s[ax] for s in (shapes or {}).get(side, []) if len(s) > ax] for side in ("torch", "paddle")}
    fixed = {side: len(set(lens)) == 1 and len(lens) > 1 for side, lens in seen.items()}
    if fixed[long_side] and not fixed[short_side]:
        return f"{long_side} pads to {long_len} in every batch (a max length), {short_side} to the longest in the batch"
    return f"{long_side} pads axis {ax} to {long_len}, {short_side} to {short_len}"


# ------------------------------------------------------------------ what each split is
def count_reason(t: dict, p: dict) -> str:
    """Numbers of batches that differ: a dropped last batch, a batch size, or just the counts."""
    nt, nq = t["batches"], p["batches"]
    text = f"{nt} batches vs {nq}"
    st, sp = _sizes(t), _sizes(p)
    if st is None or sp is None:
        return text
    if abs(nt - nq) == 1:
        (lside, longer), (sside, shorter) = sorted((("torch", st), ("paddle", sp)), key=lambda s: -len(s[1]))
        if longer[:-1] == shorter and len(longer) > 1 and longer[-1] < longer[0]:
            last = f"last batch {longer[-1]} vs none" if lside == "torch" else f"last batch none vs {longer[-1]}"
            return f"{text}, {last}: {sside} drops the last partial batch (drop_last)"
    if st and sp and st[0] != sp[0]:
        return f"{text}: batch size {st[0]} vs {sp[0]}"
    return text


def sizes_reason(t: dict, p: dict) -> str:
    st, sp = _sizes(t), _sizes(p)
    first = next(i for i, (x, y) in enumerate(zip(st, sp)) if x != y)
    return f"batch {first} holds {st[first]} items vs {sp[first]}" + (": batch size differs" if first == 0 else "")


def _sizes(d: dict) -> list | None:
    return None if d.get("sizes") is None else [int(s) for s in np.asarray(d["sizes"]).reshape(-1)]


def listing(names) -> str:
    names = list(names)
    return ", ".join(names[:SHOWN]) + (", ..." if len(names) > SHOWN else "") if names else "none"
