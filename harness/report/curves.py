"""Per-step series of a finished run (the backward and train losses, the learning rate), read back
from its artifacts folder, each with the |d| its keys were allowed: what report.html draws as a
curve with its tolerance band. Framework-free; the .npy files are read without running code."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.report.artifacts import STEMS
from harness.safety.safeload import UnsafeFile, load_npy_dict

# report key -> step, for the keys that form a curve (rank and framework prefixed keys do not)
STEP_KEY = {"backward": re.compile(r"loss_(\d+)"), "train": re.compile(r"loss_(\d+)"),
            "lr": re.compile(r"step_(\d+)_.+_lr")}
TITLES = {"backward": "backward check: loss per step", "train": "train check: loss per step",
          "lr": "lr check: learning rate per step"}


@dataclass
class Curve:
    check: str
    title: str
    steps: list
    torch: list
    paddle: list
    allowed: list  # per step, the |torch - paddle| its key was allowed
    passed: list  # per step, its key's verdict

    @property
    def aligned(self) -> bool:
        return all(self.passed)


def allowed_diff(key: dict, a: float, b: float) -> float:
    """The |d| a scalar key could have had and passed: rtol of the larger magnitude (the diff's
    relative rule), else the tighter of its mean and max limits (equal for one value)."""
    if key.get("rtol") is not None:
        return key["rtol"] * max(abs(a), abs(b))
    limits = [v for v in (key.get("threshold"), key.get("max_threshold")) if v is not None]
    return min(limits) if limits else 0.0


def _side(path: Path) -> dict:
    try:
        return load_npy_dict(path)
    except (OSError, UnsafeFile, ValueError, EOFError):
        return {}  # a curve that cannot be read is left out; the tables still say everything


def curve(out_dir: Path, check: dict) -> Curve | None:
    pattern = STEP_KEY.get(check["name"])
    if pattern is None:
        return None
    stem = STEMS[check["name"]]
    torch_side, paddle_side = (_side(Path(out_dir) / f"{stem}_{fw}.npy") for fw in ("torch", "paddle"))
    rows = []
    for key in check["keys"]:
        m = pattern.fullmatch(key["key"])
        if m and key["key"] in torch_side and key["key"] in paddle_side:
            a, b = float(np.asarray(torch_side[key["key"]])), float(np.asarray(paddle_side[key["key"]]))
            rows.append((int(m.group(1)), a, b, allowed_diff(key, a, b), bool(key["passed"])))
    if len(rows) < 2:
        return None
    rows.sort()
    steps, t, p, allowed, passed = (list(col) for col in zip(*rows))
    return Curve(check["name"], TITLES[check["name"]], steps, t, p, allowed, passed)


def curves(out_dir: Path, report: dict) -> list:
    found = (curve(out_dir, check) for check in report["checks"])
    return [c for c in found if c is not None]
