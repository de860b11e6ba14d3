"""Inline SVG charts for report.html: a curve per framework over the tolerance band around torch's,
failing steps marked. Plain SVG text, so the report needs no script library and works offline."""

from __future__ import annotations

from html import escape

from harness.report.curves import Curve
from harness.verdict.diff import fmt

W, H = 640, 240
LEFT, RIGHT, TOP, BOTTOM = 70, 12, 28, 30  # margins for the axis labels and the legend


def _y_range(values: list) -> tuple:
    """The values' range padded by 5 %, and at least 1 % of their magnitude: a constant lr or a
    band of 1e-9 draws as a thin strip around the line, not as the whole chart."""
    lo, hi = min(values), max(values)
    pad = max((hi - lo) * 0.05, 0.005 * max(abs(lo), abs(hi)), 1e-12)
    return lo - pad, hi + pad


def _scale(lo: float, hi: float, size: float, flip: bool):
    span = (hi - lo) or 1.0  # one step still gets an axis
    if flip:
        return lambda v: TOP + size - (v - lo) / span * size
    return lambda v: LEFT + (v - lo) / span * size


def _points(xs, ys, sx, sy) -> str:
    return " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in zip(xs, ys))


def _axes(c: Curve, lo: float, hi: float) -> str:
    x0, x1, y1 = LEFT, W - RIGHT, H - BOTTOM
    labels = [(TOP + 4, f"{hi:.4g}"), (y1, f"{lo:.4g}")]
    text = "".join(f'<text x="{x0 - 6}" y="{y:.0f}" text-anchor="end" class="tick">{escape(s)}</text>'
                   for y, s in labels)
    text += (f'<text x="{x0}" y="{H - 10}" class="tick">step {c.steps[0]}</text>'
             f'<text x="{x1}" y="{H - 10}" text-anchor="end" class="tick">step {c.steps[-1]}</text>')
    return f'<path d="M{x0},{TOP} V{y1} H{x1}" class="axis"/>' + text


def _legend(c: Curve) -> str:
    verdict = "within the band" if c.aligned else f"{c.passed.count(False)} of {len(c.passed)} steps outside"
    items = [("torch", "torch"), ("paddle", "paddle"), ("band", "tolerance band")]
    out, x = "", LEFT
    for cls, label in items:
        out += f'<rect x="{x}" y="8" width="14" height="8" class="key-{cls}"/><text x="{x + 18}" y="16">{label}</text>'
        x += 30 + 7 * len(label)
    return out + f'<text x="{W - RIGHT}" y="16" text-anchor="end" class="{"ok" if c.aligned else "bad"}">{verdict}</text>'


def chart(c: Curve) -> str:
    """One SVG: the band (torch ± allowed |d|), both curves, a red dot on each failing step."""
    upper = [t + a for t, a in zip(c.torch, c.allowed)]
    lower = [t - a for t, a in zip(c.torch, c.allowed)]
    lo, hi = _y_range(lower + upper + c.paddle)
    sx = _scale(c.steps[0], c.steps[-1], W - LEFT - RIGHT, flip=False)
    sy = _scale(lo, hi, H - TOP - BOTTOM, flip=True)
    band = _points(c.steps + c.steps[::-1], upper + lower[::-1], sx, sy)
    dots = "".join(f'<circle cx="{sx(s):.1f}" cy="{sy(p):.1f}" r="3" class="fail"><title>step {s}: torch '
                   f'{fmt(t)}, paddle {fmt(p)}, |d| {fmt(abs(t - p))} &gt; {fmt(a)}</title></circle>'
                   for s, t, p, a, ok in zip(c.steps, c.torch, c.paddle, c.allowed, c.passed) if not ok)
    return (f'<svg class="chart" data-check="{escape(c.check)}" viewBox="0 0 {W} {H}" width="{W}" height="{H}" '
            f'role="img" aria-label="{escape(c.title)}">'
            f'<polygon points="{band}" class="band"/>{_axes(c, lo, hi)}'
            f'<polyline points="{_points(c.steps, c.torch, sx, sy)}" class="torch"/>'
            f'<polyline points="{_points(c.steps, c.paddle, sx, sy)}" class="paddle"/>{dots}{_legend(c)}</svg>')
