"""train_curve.png: both loss curves inside their tolerance band, their difference against the
allowed one, and the verdict in the title. When the train check fails on a BatchNorm buffer or
the metric while the losses agree, that key gets its own panel: two overlapping loss curves
must never read as "aligned" beside a failing key."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

from harness.report.curves import allowed_diff
from harness.verdict.keys import Kind

EXTRA_PANELS = 2  # failing non-loss keys drawn; the rest are in the title's count and report.json


def spec(result, torch_side: dict, paddle_side: dict) -> dict:
    """What the figure shows, as plain data: the loss series with the allowed |d| per step, the
    failing non-loss keys with their values, and the verdict line."""
    losses = sorted((k for k in result.keys if k.id.kind is Kind.LOSS and k.id.rank is None), key=lambda k: k.id.step)
    rows = [(k.id.step, float(torch_side[k.id]), float(paddle_side[k.id]), k) for k in losses
            if k.id in torch_side and k.id in paddle_side]
    steps, t, p = ([r[i] for r in rows] for i in range(3))
    allowed = [allowed_diff(r[3].to_json(), r[1], r[2]) for r in rows]
    failing = [k for k in result.keys if not k.passed and k.id.kind is not Kind.LOSS]
    panels = [_panel_data(k, torch_side[k.id], paddle_side[k.id]) for k in failing
              if k.id in torch_side and k.id in paddle_side][:EXTRA_PANELS]
    return {"steps": steps, "torch": t, "paddle": p, "allowed": allowed,
            "failing_steps": [r[0] for r in rows if not r[3].passed], "panels": panels,
            "verdict": verdict(result, len(rows), failing)}


def _panel_data(key, torch_value, paddle_value) -> dict:
    """A failing key's values per element, with the |d| each element was allowed (the relative
    limit of its magnitude, or the absolute max limit) and the mean limit, and why it failed."""
    t, p = (np.ravel(np.asarray(v, np.float64)) for v in (torch_value, paddle_value))
    allowed = key.rtol * np.maximum(np.abs(t), np.abs(p)) if key.rtol is not None else np.full(t.shape, key.max_threshold or 0.0)
    return {"key": key.key, "torch": t, "paddle": p, "allowed": allowed, "reason": key.reason,
            "mean_limit": None if key.rtol is not None else key.threshold}


def verdict(result, n_losses: int, failing: list) -> str:
    if result.passed:
        return f"ALIGNED: {n_losses} losses within the band, every key agrees"
    bad = sum(1 for k in result.keys if not k.passed and k.id.kind is Kind.LOSS)
    text = f"MISALIGNED: {bad} of {n_losses} losses outside the band" if bad else "MISALIGNED: losses within the band"
    if failing:
        more = f" (+{len(failing) - EXTRA_PANELS} more)" if len(failing) > EXTRA_PANELS else ""
        text += "; failing: " + ", ".join(k.key for k in failing[:EXTRA_PANELS]) + more
    return text


def train_curve(path: Path, result, torch_side: dict, paddle_side: dict, title: str) -> str | None:
    """Draws the figure; returns a note instead when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display on servers and CI
        import matplotlib.pyplot as plt
    except ImportError:
        return "train_curve.png not drawn: matplotlib is not installed (pip install -e \".[plot]\")"
    s = spec(result, torch_side, paddle_side)
    rows = 2 + len(s["panels"])
    fig, axes = plt.subplots(rows, 1, figsize=(8, 3 + 2.2 * (rows - 1)), height_ratios=(3, 2, *[2.2] * len(s["panels"])))
    _losses(axes[0], s, title)
    _differences(axes[1], s)
    for ax, panel in zip(axes[2:], s["panels"]):
        _panel(ax, panel)
    fig.suptitle(textwrap.fill(s["verdict"], 90), color="tab:green" if result.passed else "tab:red", fontsize=10, fontweight="bold")
    save_figure(plt, fig, path)
    return None


def save_figure(plt, fig, path) -> None:
    """The figure into `path` through a temporary name beside it, then closed."""
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


def _losses(ax, s: dict, title: str) -> None:
    t, p, allowed = (np.asarray(s[k], np.float64) for k in ("torch", "paddle", "allowed"))
    ax.fill_between(s["steps"], t - allowed, t + allowed, color="tab:blue", alpha=0.2, label="tolerance band")
    ax.plot(s["steps"], t, label="torch", color="tab:orange", linewidth=2)
    ax.plot(s["steps"], p, label="paddle", color="tab:blue", linewidth=1.2, linestyle="--")
    bad = [i for i, step in enumerate(s["steps"]) if step in set(s["failing_steps"])]
    if bad:
        ax.scatter([s["steps"][i] for i in bad], p[bad], color="tab:red", marker="x", zorder=3, label="outside the band")
    ax.set_ylabel("loss")
    ax.set_title(f"{title}: training loss", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)


def _differences(ax, s: dict) -> None:
    t, p = np.asarray(s["torch"], np.float64), np.asarray(s["paddle"], np.float64)
    ax.plot(s["steps"], np.abs(t - p), color="tab:red", label="|torch - paddle|")
    ax.plot(s["steps"], s["allowed"], color="black", linestyle=":", label="allowed")
    ax.set_yscale("symlog", linthresh=1e-9)
    ax.set_ylabel("|d| of the loss")
    ax.set_xlabel("step")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)


def _panel(ax, panel: dict) -> None:
    """A failing buffer or metric where the failure is: a vector's |d| per element against its
    limits (its values overlap at any readable scale), one value against its tolerance band."""
    t, p, allowed = panel["torch"], panel["paddle"], panel["allowed"]
    x = np.arange(t.size)
    if t.size > 1:
        d = np.abs(t - p)
        ax.bar(x, d, color=np.where(d > allowed, "tab:red", "tab:green"), label="|torch - paddle|")
        ax.plot(x, allowed, color="black", linestyle=":", label="allowed per element")
        if panel["mean_limit"] is not None:
            ax.axhline(panel["mean_limit"], color="tab:purple", linestyle="--", label=f"mean limit (mean |d| {d.mean():.3g})")
        ax.set_yscale("symlog", linthresh=min(1e-9, float(allowed.min()) or 1e-9))
        ax.set_xlabel("element (channel)")
    else:  # one value (a metric): torch with its allowed range as an error bar
        ax.errorbar(x, t, yerr=allowed, fmt="o", color="tab:orange", capsize=10, label="torch, tolerance band")
        ax.plot(x, p, "s", color="tab:blue", label="paddle")
        ax.set_xticks([])
    ax.set_title(textwrap.fill(f"FAIL {panel['key']} after training: {panel['reason']}", 95), color="tab:red", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
