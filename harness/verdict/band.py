"""The training run's band: how far apart the two frameworks' curves may be at an evaluation before
they are called apart (harness/trainrun/). Pure arithmetic over what both sides reported.

Two regimes, by what the two runs share:

- paired: both sides train on the same batches in the same order and draw the same dropout masks
  (backends/masks.py), so they compute the same thing and part only by round-off. The band is
  relative, PAIRED_RTOL of the value, measured on examples/digits (docs/design.md, the training run).
- independent: each side reads its own order or draws its own dropout: two samples of one random
  process. The band is Z standard errors of the difference, each side's error measured in the run
  itself: the train loss's from its step-to-step changes within the interval; the eval loss's and
  the metric's from how much the curve moves from one evaluation to the next over the last
  CURVE_WINDOW evaluations (training's own noise, which is what sets two seeds apart), with the
  eval set's sampling error (per-batch losses; an accuracy's binomial) beside it. A curve with
  fewer than three evaluations is not judged yet.

The learning rate has no noise in either: any step whose rates differ by more than LR_RTOL is a
divergence at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

PAIRED, INDEPENDENT = "paired", "independent"
PAIRED_RTOL = 1e-3  # the relative gap a paired run may have (measured: see docs/design.md)
Z = 4.0  # standard errors of the difference an independent run may have (measured: see docs/design.md)
LR_RTOL = 1e-6
CURVE_WINDOW = 4  # evaluation-to-evaluation changes an eval curve's noise is measured over


@dataclass(frozen=True)
class Stats:
    """One side's values at an evaluation, each with its standard error (None: not known yet)."""

    train_loss: float  # the mean of the per-step losses since the last evaluation
    train_noise: float | None  # the standard error of that mean (successive differences); None: one step
    eval_loss: float
    eval_noise: float | None
    metric: dict  # name -> value
    metric_noise: dict  # name -> its standard error or None


@dataclass(frozen=True)
class Point:
    """One series at one evaluation: both values, their gap and what it was allowed."""

    series: str
    torch: float
    paddle: float
    limit: float | None  # None: not judged here (a metric outside [0, 1] in the independent regime)

    @property
    def gap(self) -> float:
        return abs(self.torch - self.paddle)

    @property
    def inside(self) -> bool:
        if not (math.isfinite(self.torch) and math.isfinite(self.paddle)):
            return False
        return self.limit is None or self.gap <= self.limit

    def to_json(self) -> dict:
        return {"series": self.series, "torch": self.torch, "paddle": self.paddle, "gap": self.gap,
                "limit": self.limit, "inside": self.inside}


def train_stats(losses) -> tuple:
    """(mean, standard error of the mean) of an interval's per-step losses. The error comes from
    the differences of successive steps, so a loss that falls as it trains is not read as noise;
    of one step it is not known (None)."""
    x = np.asarray(losses, np.float64)
    if x.size < 2:
        return float(x.mean()) if x.size else float("nan"), None
    sigma2 = float(np.mean(np.diff(x) ** 2)) / 2
    return float(x.mean()), math.sqrt(sigma2 / x.size)


def curve_noise(values) -> float | None:
    """How much a curve moves from one evaluation to the next, over its last CURVE_WINDOW changes
    (as train_stats, from successive differences); None with fewer than two changes."""
    x = np.asarray(values[-(CURVE_WINDOW + 1):], np.float64)
    if x.size < 3:
        return None
    return math.sqrt(float(np.mean(np.diff(x) ** 2)) / 2)


def combined(*errors) -> float | None:
    """Independent standard errors added; None when the first (the curve's) is not known yet."""
    if errors[0] is None:
        return None
    return math.sqrt(sum(e ** 2 for e in errors if e is not None))


def binomial(value: float, n: int) -> float | None:
    """The sampling error of a proportion (an accuracy) over n examples; None outside [0, 1]."""
    if not (0.0 <= value <= 1.0) or n <= 0:
        return None
    return math.sqrt(value * (1 - value) / n)


def eval_noise(losses, sizes) -> float:
    """The sampling error of the eval loss from its per-batch losses (weighted by rows)."""
    x, w = np.asarray(losses, np.float64), np.asarray(sizes, np.float64)
    if x.size < 2 or w.sum() <= 0:
        return 0.0
    mean = float(x @ w / w.sum())
    var = float(((x - mean) ** 2) @ w / w.sum())
    return math.sqrt(var / x.size)


def points(regime: str, torch: Stats, paddle: Stats) -> list:
    """Every series at one evaluation, with its limit in the regime."""
    out = [_point("train_loss", regime, torch.train_loss, paddle.train_loss, torch.train_noise, paddle.train_noise),
           _point("eval_loss", regime, torch.eval_loss, paddle.eval_loss, torch.eval_noise, paddle.eval_noise)]
    for name, t in torch.metric.items():
        p = paddle.metric.get(name, float("nan"))
        out.append(_point(f"metric_{name}", regime, t, p, torch.metric_noise.get(name),
                          paddle.metric_noise.get(name)))
    return out


def _point(series: str, regime: str, t: float, p: float, noise_t, noise_p) -> Point:
    if regime == PAIRED:
        return Point(series, t, p, PAIRED_RTOL * max(abs(t), abs(p)))
    if noise_t is None or noise_p is None:
        return Point(series, t, p, None)
    return Point(series, t, p, Z * math.sqrt(noise_t ** 2 + noise_p ** 2))


def lr_differs(torch_lr: float, paddle_lr: float) -> bool:
    return abs(torch_lr - paddle_lr) > LR_RTOL * max(abs(torch_lr), abs(paddle_lr), 1e-12)


class Patience:
    """Evaluations in a row with a series outside its band: the run stops at `patience` of them.
    The last evaluation with every series inside is where the two last agreed."""

    def __init__(self, patience: int):
        self.patience = patience
        self.streak: list = []  # the indices of the evaluations outside, in a row up to now
        self.agreed: int | None = None  # the last evaluation with every series inside

    def add(self, index: int, pts: list) -> bool:
        """Record evaluation `index`; True when every series is inside."""
        inside = all(pt.inside for pt in pts)
        if inside:
            self.streak, self.agreed = [], index
        else:
            self.streak.append(index)
        return inside

    @property
    def exhausted(self) -> bool:
        return len(self.streak) >= self.patience


CHANCE = "chance_spread"


def within_chance(key, point: dict | None) -> bool:
    """chance_spread: a final metric outside [tolerance] train, of a run whose two sides drew
    differently (each its own order or dropout: the independent regime), released when its gap is
    inside the band of the last evaluation (the two runs' chance spread, measured in the run). The
    guide's 0.15 % cannot tell a port from chance there: measured on examples/digits with paddle's
    own order, two of ten seeds of a correct port ended 0.43 % and 0.58 % apart. Says so on the key."""
    if key.passed or point is None or point.get("limit") is None or not point["inside"]:
        return False
    key.passed, key.rule = True, CHANCE
    key.note = (f"|d| {point['gap']:.3g} > rtol {key.rtol:g} of the value, within the two runs' chance spread "
                f"{point['limit']:.3g} ({Z:g} standard errors): each side drew its own order or dropout [{key.reason}]")
    key.reason = ""
    return True
