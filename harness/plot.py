"""train_curve.png: both loss curves and their difference, readable at a glance."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def train_curve(path: Path, torch_loss, paddle_loss, title: str) -> str | None:
    """Draws the figure; returns a note instead when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display on servers and CI
        import matplotlib.pyplot as plt
    except ImportError:
        return "train_curve.png not drawn: matplotlib is not installed (pip install -e \".[plot]\")"
    t, p = np.asarray(torch_loss, np.float64), np.asarray(paddle_loss, np.float64)
    steps = np.arange(len(t))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, height_ratios=(3, 2))
    top.plot(steps, t, label="torch", color="tab:orange", linewidth=2)
    top.plot(steps, p, label="paddle", color="tab:blue", linewidth=1.2, linestyle="--")
    top.set_ylabel("loss")
    top.set_title(f"{title}: training loss")
    top.legend()
    top.grid(alpha=0.3)
    n = min(len(t), len(p))
    bottom.plot(steps[:n], np.abs(t[:n] - p[:n]), color="tab:red")
    bottom.set_yscale("symlog", linthresh=1e-9)
    bottom.set_ylabel("|torch - paddle|")
    bottom.set_xlabel("step")
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    try:
        fig.savefig(tmp, dpi=100)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk leaves no half-drawn figure behind
        raise
    finally:
        plt.close(fig)
    return None
