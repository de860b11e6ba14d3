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
from harness.verdict.band import LR_RTOL

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
    found = []
    for check in report["checks"]:
        if check.get("run"):  # a training run: its evaluations in report.json, its steps in train_align_*.npy
            series = {fw: _side(Path(out_dir) / f"{STEMS['train']}_{fw}.npy") for fw in ("torch", "paddle")}
            found += run_curves(check["run"], series)
        else:
            found.append(curve(out_dir, check))
    return [c for c in found if c is not None]


MAX_POINTS = 2000  # a per-step curve of a long run is drawn from every k-th step


def run_curves(run: dict, series: dict) -> list:
    """A training run's curves: the train loss and the learning rate per step (from `series`, each
    side's train_align arrays, where there), then per evaluation every series it was judged on,
    each with the |d| the band allowed it and whether it was inside."""
    evals = run.get("evaluations", [])
    out = [_steps_curve("train loss per step (band: its interval's mean)", series, "train_loss", evals),
           _steps_curve("learning rate per step", series, "lr", evals)]
    names = list(dict.fromkeys(pt["series"] for e in evals for pt in e["points"]))
    for name in names:
        rows = [(e, pt) for e in evals for pt in e["points"] if pt["series"] == name]
        out.append(Curve("train", f"training run: {name} per evaluation", [e["step"] for e, _ in rows],
                         [pt["torch"] for _, pt in rows], [pt["paddle"] for _, pt in rows],
                         [pt["limit"] or 0.0 for _, pt in rows],
                         [bool(pt["inside"] or e.get("arbitrated")) for e, pt in rows]))
    return [c for c in out if c is not None and c.steps]


def _steps_curve(title: str, series: dict, name: str, evals: list) -> Curve | None:
    t, p = (np.asarray(series.get(fw, {}).get(name, []), np.float64).reshape(-1) for fw in ("torch", "paddle"))
    n = min(t.size, p.size)
    if n < 2:
        return None
    steps = np.arange(n)
    allowed, passed = np.zeros(n), np.ones(n, bool)
    if name == "lr":
        allowed = LR_RTOL * np.maximum(np.abs(t[:n]), np.abs(p[:n]))
        passed = np.abs(t[:n] - p[:n]) <= allowed
    else:
        start = 0
        for e in evals:  # each step shows its interval's band, and its verdict
            pt = next((x for x in e["points"] if x["series"] == "train_loss"), None)
            if pt is not None:
                allowed[start:e["step"]] = pt["limit"] or 0.0
                passed[start:e["step"]] = pt["inside"] or bool(e.get("arbitrated"))
            start = e["step"]
    keep = steps[:: max(1, n // MAX_POINTS)]
    return Curve("train", f"training run: {title}", keep.tolist(), t[keep].tolist(), p[keep].tolist(),
                 allowed[keep].tolist(), passed[keep].tolist())
