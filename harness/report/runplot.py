"""train_curve.png of a training run: a panel per curve report.html draws (the train loss and the
learning rate per step, each judged series per evaluation), both frameworks over the band around
torch's, the evaluations outside it marked, where the run stopped drawn, the verdict as title."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

from harness.report.curves import run_curves
from harness.report.plot import save_figure


def run_curve(path: Path, check: dict, series: dict, title: str) -> str | None:
    """Draws the figure; returns a note instead when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display on servers and CI
        import matplotlib.pyplot as plt
    except ImportError:
        return "train_curve.png not drawn: matplotlib is not installed (pip install -e \".[plot]\")"
    found = run_curves(check["run"], series)
    if not found:
        return None
    fig, axes = plt.subplots(len(found), 1, figsize=(8, 2.4 * len(found) + 0.6), squeeze=False)
    stop = (check["run"].get("stopped") or {}).get("steps_done")
    for ax, curve in zip(axes[:, 0], found):
        _panel(ax, curve, stop)
    verdict = "ALIGNED" if check["passed"] else f"MISALIGNED: {check.get('reason', '')}"
    fig.suptitle(textwrap.fill(f"{title}: {verdict}", 90), color="tab:green" if check["passed"] else "tab:red",
                 fontsize=10, fontweight="bold")
    save_figure(plt, fig, path)
    return None


def _panel(ax, c, stop) -> None:
    x = np.asarray(c.steps)
    t, p, allowed = (np.asarray(v, np.float64) for v in (c.torch, c.paddle, c.allowed))
    marker = "o" if len(x) < 50 else None
    ax.fill_between(x, t - allowed, t + allowed, color="tab:blue", alpha=0.2, label="band")
    ax.plot(x, t, color="tab:orange", linewidth=2, marker=marker, label="torch")
    ax.plot(x, p, color="tab:blue", linewidth=1.2, linestyle="--", marker=marker, label="paddle")
    bad = ~np.asarray(c.passed, bool)
    if bad.any() and len(x) < 50:
        ax.scatter(x[bad], p[bad], color="tab:red", marker="x", zorder=3, s=60, label="outside the band")
    if stop is not None:
        ax.axvline(stop, color="tab:red", linestyle=":", label="stopped")
    ax.set_title(c.title, fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
