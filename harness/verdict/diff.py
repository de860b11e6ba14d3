"""The diff engine: per-key comparison results that carry their statistics and their verdict.

Rules (docs/design.md): never transpose, broadcast or cast silently; NaN/Inf on either side fail
(unless allow_nan and both sides have them at exactly the same places); integers and bools
compare exactly in a wide type; a key on one side only fails by name; a check with nothing
compared fails.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from harness.verdict.keys import Key
from harness.verdict.tolerance import Tolerance, ToleranceConfig

# Relative differences are |a - b| / max(|a|, |b|, REL_EPS): symmetric, and finite where both are 0.
REL_EPS = 1e-12
# A difference within this many units of the last place of the values' own precision is rounding,
# whatever the absolute threshold says: a float32 loss of 2.7 cannot agree to 1e-6 (3 ulps) after a
# few Adam steps in a correct port. The floor scales with mean |value| (mean rule) and max |value|
# (max rule); float64 and exact integers get no floor beyond the threshold.
ULPS = 8
ULP_FLOOR = {np.dtype(np.float32): ULPS * float(np.finfo(np.float32).eps),
             np.dtype(np.float16): ULPS * float(np.finfo(np.float16).eps)}


@dataclass
class KeyResult:
    id: Key
    passed: bool
    reason: str = ""
    shape: list | None = None
    shape_other: list | None = None
    dtype: str | None = None
    dtype_other: str | None = None
    mean_abs: float | None = None
    max_abs: float | None = None
    mean_rel: float | None = None
    max_rel: float | None = None
    cosine: float | None = None
    count: int = 0
    worst_index: list | None = None
    nonfinite: bool = False
    threshold: float | None = None
    max_threshold: float | None = None
    rtol: float | None = None
    note: str = ""
    rule: str = ""  # the named verdict rule (harness/verdict/rules.py) that changed this key's verdict
    precision: str = ""  # the dtype the values were compared in
    floored: list | None = None  # which limits ("mean", "max") the float32 floor raised above the config
    update: float | None = None  # a parameter's mean |after - before| (torch), its limits' measure (updates.py)

    @property
    def key(self) -> str:
        return str(self.id)

    @property
    def compared(self) -> bool:
        return self.count > 0

    def to_json(self) -> dict:
        d = {"key": self.key, **{k: v for k, v in asdict(self).items() if k != "id"}}
        return {k: v for k, v in d.items() if v is not None and v != ""}


@dataclass
class CheckResult:
    name: str
    keys: list = field(default_factory=list)
    reason: str = ""
    notes: list = field(default_factory=list)
    tensor_dumps: str = ""  # "full" | "statistics": how parameters and gradients were saved
    arbitration: str = ""  # "float64", or why float32's own rules decided ("fallback: ...")
    decay: dict = field(default_factory=dict)  # training checks: per side, torch name -> how its optimizer decays it
    run: dict | None = None  # a training run's account (harness/trainrun/): its plan, evaluations, where it stopped
    located: object = None  # what a training run's own localization found (harness/locate Outcome); not in JSON

    @property
    def compared(self) -> int:
        return sum(1 for k in self.keys if k.compared)

    @property
    def passed(self) -> bool:
        return self.compared > 0 and not self.reason and all(k.passed for k in self.keys)

    @property
    def failing(self) -> list:
        return [k for k in self.keys if not k.passed]

    @property
    def why(self) -> str:
        if self.reason:
            return self.reason
        if self.compared == 0:  # what stopped every key (NaN/Inf, a shape) says what happened
            bad = [k for k in self.keys if not k.passed and k.reason]
            more = f"; {len(bad) - 1} more key(s) not compared" if len(bad) > 1 else ""
            return f"{bad[0].key}: {bad[0].reason}{more}" if bad else "no keys compared"
        bad = self.failing
        return f"{len(bad)} of {len(self.keys)} keys differ" if bad else ""

    def to_json(self) -> dict:
        d = {"name": self.name, "passed": self.passed, "keys": [k.to_json() for k in self.keys]}
        if self.why:
            d["reason"] = self.why
        if self.notes:
            d["notes"] = list(self.notes)
        if self.tensor_dumps:
            d["tensor_dumps"] = self.tensor_dumps
        if self.arbitration:
            d["arbitration"] = self.arbitration
        if self.decay:
            d["decay"] = self.decay
        if self.run is not None:
            d["run"] = self.run
        return d


def fmt(x) -> str:
    """Every number a person reads: three significant digits, '-' for none."""
    return "-" if x is None else f"{x:.3g}"


def _shape(a) -> list:
    return list(np.shape(a))


def compare_arrays(key: Key, ref, other, tol: Tolerance) -> KeyResult:
    """ref is the reference (torch) side, other the port (paddle) side."""
    res = KeyResult(id=key, passed=False, threshold=tol.mean, max_threshold=tol.max_abs, rtol=tol.rtol)
    if ref is None or other is None:
        res.reason = f"only in {'paddle' if ref is None else 'torch'} output"
        return res
    a, b = np.asarray(ref), np.asarray(other)
    res.shape, res.dtype = _shape(a), a.dtype.name
    res.precision = a.dtype.name if np.issubdtype(a.dtype, np.floating) else ""
    if a.shape != b.shape:
        res.shape_other = _shape(b)
        res.reason = f"shape {tuple(a.shape)} (torch) vs {tuple(b.shape)} (paddle)"
        return res
    if a.dtype.kind in "US" and a.dtype.kind == b.dtype.kind:  # text, whatever each side's longest string
        return _compare_text(res, a, b)
    if a.dtype != b.dtype:
        res.dtype_other = b.dtype.name
        res.reason = f"dtype {a.dtype.name} (torch) vs {b.dtype.name} (paddle)"
        return res
    if a.dtype.hasobject or not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
        res.reason = f"cannot compare dtype {a.dtype.name}"
        return res
    if a.size == 0:
        res.passed, res.note = True, "empty on both sides"
        return res
    if np.issubdtype(a.dtype, np.complexfloating):
        res.reason = "complex arrays are not supported"
        return res
    if not np.issubdtype(a.dtype, np.floating):
        return _compare_exact(res, a, b)
    return _compare_float(res, a, b, tol, ULP_FLOOR.get(a.dtype, 0.0))


def _compare_exact(res: KeyResult, a: np.ndarray, b: np.ndarray) -> KeyResult:
    """Integers and bools: equal or not, decided exactly (statistics in float64 for reading)."""
    sums = _Sums()
    fa, fb = a.reshape(-1), b.reshape(-1)
    differing = 0
    for start in range(0, fa.size, CHUNK):
        x, y = fa[start:start + CHUNK], fb[start:start + CHUNK]
        differing += int(np.count_nonzero(x != y))
        sums.add(x.astype(np.float64), y.astype(np.float64), start)
    sums.into(res, a.shape)
    res.passed = differing == 0
    res.threshold, res.max_threshold, res.rtol = 0.0, 0.0, None
    if not res.passed:
        res.reason = f"{differing} of {fa.size} values differ (exact compare), first at {res.worst_index}"
    return res


def _compare_text(res: KeyResult, a: np.ndarray, b: np.ndarray) -> KeyResult:
    """Strings (the pair's own data may hold them): equal or not, exactly; no statistics."""
    differ = a != b
    res.count, res.threshold, res.max_threshold, res.rtol = int(a.size), 0.0, 0.0, None
    res.passed = not differ.any()
    if not res.passed:
        res.worst_index = [int(i) for i in np.argwhere(differ)[0]]
        res.reason = f"{int(differ.sum())} of {a.size} strings differ (exact compare), first at {res.worst_index}"
    return res


# Elements compared at a time: a tensor of any size is judged in bounded memory (the coordinator
# must not grow with the model beyond one chunk of the pair being compared).
CHUNK = 1 << 20


class _Sums:
    """Running statistics of |a - b| over the compared (finite) elements, chunk by chunk."""

    def __init__(self):
        self.count, self.sum_d, self.max_d, self.arg = 0, 0.0, -1.0, 0
        self.sum_rel, self.max_rel, self.dot, self.sq_a, self.sq_b = 0.0, 0.0, 0.0, 0.0, 0.0
        self.sum_abs_a, self.max_abs_a = 0.0, 0.0

    def add(self, x: np.ndarray, y: np.ndarray, offset: int) -> None:
        if not x.size:
            return
        # values near float64's largest (a float64 attention mask's finfo.min) overflow the sums to
        # inf, which the statistics carry, instead of warnings on the console
        with np.errstate(over="ignore", invalid="ignore"):
            self._add(x, y, offset)

    def _add(self, x: np.ndarray, y: np.ndarray, offset: int) -> None:
        d, ax, ay = np.abs(x - y), np.abs(x), np.abs(y)
        i = int(np.argmax(d))
        if d[i] > self.max_d:
            self.max_d, self.arg = float(d[i]), offset + i
        rel = d / np.maximum(np.maximum(ax, ay), REL_EPS)
        self.count += int(d.size)
        self.sum_d += float(d.sum())
        self.sum_rel += float(rel.sum())
        self.max_rel = max(self.max_rel, float(rel.max()))
        self.dot += float(x @ y)
        self.sq_a += float(x @ x)
        self.sq_b += float(y @ y)
        self.sum_abs_a += float(ax.sum())
        self.max_abs_a = max(self.max_abs_a, float(ax.max()))

    def into(self, res: KeyResult, shape: tuple) -> None:
        res.count = self.count
        res.mean_abs, res.max_abs = self.sum_d / self.count, self.max_d
        res.worst_index = [int(i) for i in np.unravel_index(self.arg, shape)]
        res.mean_rel, res.max_rel = self.sum_rel / self.count, self.max_rel
        na, nb = np.sqrt(self.sq_a), np.sqrt(self.sq_b)
        if not np.isfinite([self.dot, na, nb]).all():
            res.cosine = None  # beyond float64's range
        else:
            res.cosine = 1.0 if na == 0 and nb == 0 else float(self.dot / (na * nb)) if na and nb else 0.0


class _NonFinite:
    """Where NaN/Inf are, on which side, and whether both sides have them at the same places."""

    def __init__(self):
        self.count, self.first, self.in_a, self.in_b, self.same = 0, None, False, False, True

    def add(self, x, y, bx, by, offset: int) -> None:
        either = bx | by
        if not either.any():
            return
        if self.first is None:
            self.first = offset + int(np.argmax(either))
        self.count += int(either.sum())
        self.in_a, self.in_b = self.in_a or bool(bx.any()), self.in_b or bool(by.any())
        self.same = self.same and np.array_equal(bx, by) and np.array_equal(x[bx], y[by], equal_nan=True)


def _compare_float(res: KeyResult, a: np.ndarray, b: np.ndarray, tol: Tolerance, ulp: float) -> KeyResult:
    fa, fb = a.reshape(-1), b.reshape(-1)
    sums, bad = _Sums(), _NonFinite()
    for start in range(0, fa.size, CHUNK):
        x, y = fa[start:start + CHUNK].astype(np.float64), fb[start:start + CHUNK].astype(np.float64)
        bx, by = ~np.isfinite(x), ~np.isfinite(y)
        bad.add(x, y, bx, by, start)
        keep = ~(bx | by)
        sums.add(x[keep], y[keep], start) if bad.count else sums.add(x, y, start)
    if bad.count:
        res.nonfinite = True
        if not (tol.allow_nan and bad.same):
            side = "both" if bad.in_a and bad.in_b else "torch" if bad.in_a else "paddle"
            where = [int(i) for i in np.unravel_index(bad.first, a.shape)]
            res.reason = f"{bad.count} NaN/Inf value(s) ({side})" + (f", first at {where}" if where else "")
            res.worst_index = where
            return res
        if sums.count == 0:
            res.passed, res.note = True, "all values non-finite at the same places (allow_nan)"
            return res
    sums.into(res, a.shape)
    if bad.count:
        res.worst_index = None  # indices among the finite elements would mislead
        res.note = "NaN/Inf at identical places (allow_nan)"
    return _verdict(res, tol, ulp, sums)


def _verdict(res: KeyResult, tol: Tolerance, ulp: float, sums: _Sums) -> KeyResult:
    if tol.rtol is not None:
        res.passed = res.max_rel <= tol.rtol
        if not res.passed:
            res.reason = f"max rel {fmt(res.max_rel)} > rtol {fmt(tol.rtol)}"
        return res
    reasons = []
    mean_limit = max(tol.mean, ulp * sums.sum_abs_a / sums.count)
    max_limit = max(tol.max_abs, ulp * sums.max_abs_a)
    floored = [name for name, raised in (("mean", mean_limit > tol.mean), ("max", max_limit > tol.max_abs)) if raised]
    if floored:  # named on the key, so a reader never mistakes the floor for the configured value
        res.threshold, res.max_threshold, res.floored = mean_limit, max_limit, floored
        res.note = f"threshold raised to {ULPS} float32 ulps of the values"
    if not res.mean_abs <= mean_limit:
        reasons.append(f"mean |d| {fmt(res.mean_abs)} > {fmt(mean_limit)}")
    if not res.max_abs <= max_limit:
        reasons.append(f"max |d| {fmt(res.max_abs)} at {res.worst_index} > {fmt(max_limit)}")
    res.passed = not reasons
    res.reason = "; ".join(reasons)
    return res


def compare_dicts(check: str, ref: dict, other: dict, tolerances: ToleranceConfig | Tolerance) -> CheckResult:
    """Compare every key of either side (dicts keyed by Key), reference order first. A single
    Tolerance applies to all; a ToleranceConfig picks per check and key glob."""
    keys = list(ref) + [k for k in other if k not in ref]
    result = CheckResult(check)
    for key in keys:
        tol = tolerances if isinstance(tolerances, Tolerance) else tolerances.for_key(check, str(key))
        result.keys.append(compare_arrays(key, ref.get(key), other.get(key), tol))
    return result
