"""The init check's statistics: a freshly initialized tensor of each side, summarised in its worker
(moments over every value and a seeded sample: backends/state.py summarize), compared as a
distribution. Constants compare exactly; random tensors by three two-sample tests, each at the
run's Bonferroni level: the means (Welch's z), the scales (z on the log variance, its variance
from each side's kurtosis) and the shapes (Kolmogorov-Smirnov on the samples). Each side is then
described (family, parameters) and named after the initializer whose formula its values fit."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from harness.verdict.diff import fmt

ALPHA = 1e-4  # false-alarm rate of a whole init check on a correct port (Bonferroni over its tests)
TESTS = 3  # per random tensor: mean, scale, shape
MIN_VALUES = 128  # random tensors with fewer values on a side: too small to tell


@dataclass(frozen=True)
class Side:
    """One side's tensor: its summary, its shape and its framework (whose fan convention applies)."""

    framework: str
    name: str
    shape: tuple
    stats: dict
    fan_in: int | None = None  # of the module's weight, for a bias

    @property
    def n(self) -> int:
        return int(self.stats["n"])

    @property
    def constant(self) -> bool:
        return self.n > 0 and self.stats["min"] == self.stats["max"]


def p_values(a: dict, b: dict) -> dict:
    """Two-sided p-values that a and b (summaries) come from one distribution."""
    va, vb = a["std"] ** 2, b["std"] ** 2
    se_mean = math.sqrt(va / a["n"] + vb / b["n"])
    z_mean = (a["mean"] - b["mean"]) / se_mean if se_mean else 0.0
    se_scale = math.sqrt(max(a["kurtosis"] - 1, 0.0) / a["n"] + max(b["kurtosis"] - 1, 0.0) / b["n"])
    z_scale = math.log(va / vb) / se_scale if se_scale and va and vb else math.inf
    return {"mean": math.erfc(abs(z_mean) / math.sqrt(2)), "scale": math.erfc(abs(z_scale) / math.sqrt(2)),
            "shape": ks_p(np.asarray(a["sample"]), np.asarray(b["sample"]))}


def ks_p(x: np.ndarray, y: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov p-value (asymptotic, with Stephens' small-sample correction)."""
    x, y = np.sort(x), np.sort(y)
    both = np.concatenate([x, y])
    d = float(np.max(np.abs(np.searchsorted(x, both, side="right") / x.size
                            - np.searchsorted(y, both, side="right") / y.size)))
    en = math.sqrt(x.size * y.size / (x.size + y.size))
    lam = (en + 0.12 + 0.11 / en) * d
    if lam < 0.2:
        return 1.0
    total = sum((-1) ** (k - 1) * math.exp(-2 * k * k * lam * lam) for k in range(1, 101))
    return float(min(max(2 * total, 0.0), 1.0))


# ------------------------------------------------------------------ what a side looks like
def fans(side: Side) -> tuple:
    """(fan_in, fan_out) as the side's framework computes them for its initializers: torch reads a
    weight as [out, in, *kernel]; paddle a 2-D one as [in, out], others as torch does."""
    shape = side.shape
    if len(shape) < 2:
        return side.fan_in, None
    field = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    if side.framework == "paddle" and len(shape) == 2:
        return shape[0], shape[1]
    return shape[1] * field, shape[0] * field


def family(stats: dict) -> str:
    """constant, uniform, truncated normal or normal, by the bounds and the kurtosis."""
    if stats["min"] == stats["max"]:
        return "constant"
    k = stats["kurtosis"]
    return "uniform" if k < 2.1 else "truncated normal" if k < 2.7 else "normal"


def describe(side: Side) -> str:
    s = side.stats
    kind = family(s)
    if kind == "constant":
        return f"constant {fmt(s['min'])}"
    centred = abs(s["mean"]) <= 4 * s["std"] / math.sqrt(s["n"])
    if kind == "uniform":
        if centred and abs(s["max"] + s["min"]) <= 0.1 * (s["max"] - s["min"]):
            return f"uniform ±{fmt(_bound(s))} (std {fmt(s['std'])})"
        return f"uniform [{fmt(s['min'])}, {fmt(s['max'])}] (std {fmt(s['std'])})"
    mean = "0" if centred else fmt(s["mean"])
    if kind == "truncated normal":
        return f"truncated normal({mean}, {fmt(s['std'])}) within [{fmt(s['min'])}, {fmt(s['max'])}]"
    return f"normal({mean}, {fmt(s['std'])})"


def _bound(s: dict) -> float:
    """A symmetric uniform's bound, from the largest value seen (unbiased: n + 1 over n)."""
    return max(abs(s["min"]), abs(s["max"])) * (s["n"] + 1) / s["n"]


def _close(observed: float, expected: float | None, n: int, kind: str) -> bool:
    if not expected:
        return False
    slack = 0.02 + 3 / n if kind == "uniform" else max(0.02, 4 / math.sqrt(2 * n))
    return abs(observed / expected - 1) <= slack


# per framework and family: (label, formula(fan_in, fan_out) of the bound or std, the paddle
# initializer that makes the same (the guide's initializer table; HF's normal included)); a
# module's default comes first
TORCH = {
    "uniform": [("kaiming_uniform(a=√5) (torch's Linear/Conv default)", lambda i, o: i and 1 / math.sqrt(i),
                 lambda v: 'KaimingUniform(negative_slope=math.sqrt(5), nonlinearity="leaky_relu")'),
                ("xavier_uniform", lambda i, o: i and o and math.sqrt(6 / (i + o)), lambda v: "XavierUniform()"),
                ("kaiming_uniform (relu)", lambda i, o: i and math.sqrt(6 / i), lambda v: "KaimingUniform()")],
    "normal": [("normal(0, 1) (torch's Embedding default)", lambda i, o: 1.0, lambda v: "Normal(mean=0.0, std=1.0)"),
               ("normal(0, initializer_range=0.02) (HF's _init_weights)", lambda i, o: 0.02,
                lambda v: "Normal(mean=0.0, std=0.02)"),
               ("xavier_normal", lambda i, o: i and o and math.sqrt(2 / (i + o)), lambda v: "XavierNormal()"),
               ("kaiming_normal (relu)", lambda i, o: i and math.sqrt(2 / i), lambda v: "KaimingNormal()")],
}
TORCH_BIAS = [("uniform ±1/√fan_in (torch's Linear/Conv bias default)", lambda i, o: i and 1 / math.sqrt(i),
               lambda v: f"Uniform({fmt(-v)}, {fmt(v)})")]
PADDLE = {
    "uniform": [("XavierUniform (paddle's Linear/Embedding default)", lambda i, o: i and o and math.sqrt(6 / (i + o))),
                ("KaimingUniform", lambda i, o: i and math.sqrt(6 / i)),
                ("KaimingUniform(negative_slope=√5, nonlinearity='leaky_relu')", lambda i, o: i and 1 / math.sqrt(i))],
    "normal": [("KaimingNormal (paddle's Conv default)", lambda i, o: i and math.sqrt(2 / i)),
               ("XavierNormal", lambda i, o: i and o and math.sqrt(2 / (i + o))),
               ("Normal(0, 1)", lambda i, o: 1.0),
               ("Normal(0, 0.02) (PaddleNLP's initializer_range)", lambda i, o: 0.02)],
}


def _named(side: Side) -> tuple | None:
    """(label, the formula's value, the candidate) whose formula the values fit, with the side's
    own fan convention; None when none does."""
    s, kind = side.stats, family(side.stats)
    fan_in, fan_out = fans(side)
    table = TORCH if side.framework == "torch" else PADDLE
    candidates = table["uniform" if kind == "uniform" else "normal"]
    if kind == "uniform" and side.framework == "torch" and len(side.shape) < 2:
        candidates = TORCH_BIAS
    observed = _bound(s) if kind == "uniform" else s["std"]
    for candidate in candidates:
        expected = candidate[1](fan_in, fan_out)
        if _close(observed, expected, side.n, kind):
            return candidate[0], expected, candidate
    return None


def initializer(side: Side) -> str | None:
    """The initializer whose formula the values fit (constants: zeros, ones)."""
    s = side.stats
    if family(s) == "constant":
        return "zeros" if s["min"] == 0 else "ones" if s["min"] == 1 else None
    named = _named(side)
    return named[0] if named else None


def matching(side: Side) -> str:
    """The paddle initializer that makes what this (torch) side makes."""
    s, kind = side.stats, family(side.stats)
    if kind == "constant":
        return f"Constant({fmt(s['min'])})"
    named = _named(side)
    if named:
        return named[2][2](named[1])
    centred = abs(s["mean"]) <= 4 * s["std"] / math.sqrt(s["n"])
    if kind == "uniform":
        symmetric = centred and abs(s["max"] + s["min"]) <= 0.1 * (s["max"] - s["min"])
        return f"Uniform({fmt(-_bound(s))}, {fmt(_bound(s))})" if symmetric else f"Uniform({fmt(s['min'])}, {fmt(s['max'])})"
    mean = "0.0" if centred else fmt(s["mean"])
    if kind == "truncated normal":  # cut at two of its standard deviations
        half = max(abs(s["min"]), abs(s["max"]))
        return f"TruncatedNormal(mean={mean}, std={fmt(half / 2)}, a={fmt(-half)}, b={fmt(half)})"
    return f"Normal(mean={mean}, std={fmt(s['std'])})"


def portrait(side: Side) -> str:
    """`uniform ±0.2 (std 0.115) — XavierUniform, paddle's Linear/Embedding default`"""
    name = initializer(side)
    return describe(side) + (f" — {name}" if name else "")
