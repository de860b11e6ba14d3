"""What localization compares and what it reports: leaves of traced tensors compared loosely
(size-1 axes aligned), and the Finding that becomes the report's first divergence."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from harness.report.runreport import Divergence
from harness.verdict import rules
from harness.verdict.diff import KeyResult, compare_arrays, fmt
from harness.verdict.keys import value
from harness.verdict.tolerance import Tolerance

AROUND = 3  # table rows either side of the diverging module


def display(name: str) -> str:
    return name or "(model)"


@dataclass
class LeafDiff:
    key: str
    differs: bool
    shape: list | None
    shape_other: list | None = None
    mean_abs: float | None = None
    max_abs: float | None = None
    rel: float | None = None  # mean |d| / mean |torch|
    why: str = ""


def compare_loose(key: str, a, b, tol: Tolerance, *, grad: bool = False, scaled: bool = False) -> LeafDiff:
    """compare_arrays, except that shapes differing only in size-1 axes (squeezed or broadcast)
    are compared after aligning them, and dtypes of one kind are compared in the narrower one.
    For gradients (grad=True) a broadcast axis is summed instead: the gradient w.r.t. a (1, T, H)
    tensor is the sum over the batch of the gradient w.r.t. its (B, T, H) expansion. scaled: a
    gradient, judged with the update_scale rule against its own magnitude."""
    if a is None or b is None:
        side = "torch" if b is None else "paddle"
        return LeafDiff(key, True, None if a is None else list(np.shape(a)), why=f"only in {side}")
    a, b = np.asarray(a), np.asarray(b)
    shape, other = list(a.shape), list(b.shape)
    note = ""
    if a.shape != b.shape:
        if [d for d in a.shape if d != 1] == [d for d in b.shape if d != 1]:
            a, b = a.reshape([d for d in a.shape if d != 1]), b.reshape([d for d in b.shape if d != 1])
            note = "compared with size-1 axes dropped"
        else:
            try:
                common = np.broadcast_shapes(a.shape, b.shape)
            except ValueError:
                return LeafDiff(key, True, shape, other, why=f"shape {tuple(shape)} (torch) vs {tuple(other)} (paddle)")
            if len(a.shape) != len(b.shape):
                return LeafDiff(key, True, shape, other, why=f"shape {tuple(shape)} (torch) vs {tuple(other)} (paddle)")
            if grad:
                a = a.sum(axis=tuple(i for i, (x, y) in enumerate(zip(a.shape, b.shape)) if y == 1 and x != 1),
                          keepdims=True)
                b = b.sum(axis=tuple(i for i, (x, y) in enumerate(zip(a.shape, b.shape)) if x == 1 and y != 1),
                          keepdims=True)
                note = "compared after summing the broadcast axes"
            else:
                a, b = np.broadcast_to(a, common), np.broadcast_to(b, common)
                note = "compared after broadcasting size-1 axes"
    if a.dtype != b.dtype and a.dtype.kind == b.dtype.kind:
        narrow = a.dtype if a.dtype.itemsize <= b.dtype.itemsize else b.dtype
        a, b = a.astype(narrow), b.astype(narrow)
    res: KeyResult = compare_arrays(value(key), a, b, tol)
    differs = not res.passed
    rel = None
    if res.mean_abs is not None:
        with np.errstate(over="ignore"):  # a float64 mask's finfo.min: no scale to judge against
            scale = float(np.mean(np.abs(a.astype(np.float64)))) if a.size else 0.0
        rel = res.mean_abs / scale if scale > 0 else (0.0 if res.mean_abs == 0 else float("inf"))
        if differs and scaled and not res.nonfinite and np.isfinite(scale) and rules.gradient_within_scale(rel):
            differs = False
    why = res.reason or note
    return LeafDiff(key, differs, shape, other if other != shape else None, res.mean_abs, res.max_abs, rel, why)


def compare_leaves(ref: dict | None, other: dict | None, tol: Tolerance, *, grad: bool = False,
                   scaled: bool = False) -> list:
    """Tensor leaves by position (torch MHA returns (out, weights), paddle's only out: the
    extra leaves are left out, not blamed)."""
    ref, other = ref or {}, other or {}
    pairs = list(zip(ref.items(), other.items()))
    return [compare_loose(ka, va, vb, tol, grad=grad, scaled=scaled) for (ka, va), (_, vb) in pairs]


def worst(diffs: list) -> float | None:
    vals = [d.mean_abs for d in diffs if d.mean_abs is not None]
    return max(vals) if vals else None


def summary(diffs: list) -> str:
    bad = [d for d in diffs if d.differs]
    if not diffs:
        return "nothing compared"
    d = bad[0] if bad else max(diffs, key=lambda d: d.mean_abs or 0.0)
    text = f"mean |d| {fmt(d.mean_abs)}, max |d| {fmt(d.max_abs)}"
    if d.rel is not None:
        text += f" ({fmt(d.rel)} of its mean magnitude)"
    if d.why and not d.mean_abs:
        text = d.why
    return text


def window(rows: list, index: int) -> list:
    return rows[max(0, index - AROUND * 2): index + 1]


def shape_of(leaves: dict | None) -> list | None:
    if not leaves:
        return None
    return list(np.shape(next(iter(leaves.values()))))


def per_channel_count(call, shape) -> int | None:
    if call is None or not shape:
        return None
    x = next(iter(call["inputs"].values()), None)
    if x is None or x.ndim < 2 or x.shape[1] != shape[0]:
        return None
    return int(x.size // shape[0])


@dataclass
class Finding:
    check: str
    where: str  # parameter | forward | inside | after_model | loss | grad | param_grad | update | buffer | lr | metric
    layer: str | None
    step: int | None
    detail: str
    paddle_layer: str | None = None
    path: list = field(default_factory=list)  # root -> layer: {"module", "type", "diff"}
    around: list = field(default_factory=list)  # table rows: {"module", "paddle", "type", "in_shape", ...}

    def divergence(self) -> Divergence:
        return Divergence(self.check, self.where, self.layer, self.step, self.detail, self.paddle_layer,
                          self.path, self.around)


@dataclass
class Outcome:
    finding: Finding | None = None
    notes: list = field(default_factory=list)
    failed: str | None = None  # why localization could not finish: no finding then proves nothing
