"""What a key must meet to pass: per check, with per-key glob overrides. A leaf: the diff and the
config both use it."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Tolerance:
    """Per-key criteria. abs mode: mean |d| <= mean and max |d| <= max. rtol set: max rel <= rtol."""

    mean: float = 1e-6
    max: float | None = None  # None: 100 x mean
    rtol: float | None = None
    allow_nan: bool = False

    @property
    def max_abs(self) -> float:
        return self.max if self.max is not None else 100.0 * self.mean


@dataclass(frozen=True)
class ToleranceConfig:
    forward: Tolerance = Tolerance(1e-6)
    metric: Tolerance = Tolerance(1e-6)
    loss: Tolerance = Tolerance(1e-6)
    lr: Tolerance = Tolerance(1e-9)
    backward: Tolerance = Tolerance(1e-6)
    train: Tolerance = Tolerance(0.0, rtol=0.0015)
    data: Tolerance = Tolerance(1e-6)  # float fields of the pair's own data (integers and strings: exactly)
    keys: dict = field(default_factory=dict)  # glob -> Tolerance, overrides for matching keys

    def for_check(self, check: str) -> Tolerance:
        return getattr(self, check)

    def for_key(self, check: str, key: str) -> Tolerance:
        pattern = self.pattern_for(key)
        return self.keys[pattern] if pattern is not None else self.for_check(check)

    def pattern_for(self, key: str) -> str | None:
        """The first `[tolerance]` pattern that names this key, if any."""
        return next((pattern for pattern in self.keys if fnmatch.fnmatchcase(key, pattern)), None)
