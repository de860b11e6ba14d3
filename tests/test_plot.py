"""train_curve.png: the tolerance band and the verdict; a failing BatchNorm buffer or metric beside
agreeing losses gets its own panel, so the overlapping loss curves never read as aligned."""

import numpy as np
import pytest

from harness.checks.common import judge
from harness.report import plot
from harness.verdict import keys
from harness.verdict.keys import Key, Kind
from harness.verdict.tolerance import ToleranceConfig

# What is drawn is decided here, without matplotlib; the drawing itself is checked on a real run's
# train_curve.png in tests/test_html_report.py (e2e), which keeps this file fast.


def _train_result(buffer_gap: float, loss_gap: float = 0.0):
    """A train check judged as the harness judges it: relative losses, absolute running means."""
    rng = np.random.default_rng(0)
    loss = (2.5 - 0.02 * np.arange(12) + rng.normal(0, 0.01, 12)).astype(np.float32)
    t = {**keys.losses(loss), Key(Kind.METRIC, "accuracy"): np.float64(0.5)}
    p = {**keys.losses(loss * np.float32(1 + loss_gap)), Key(Kind.METRIC, "accuracy"): np.float64(0.5)}
    result = judge("train", t, p, ToleranceConfig())
    mean = rng.normal(0, 0.1, 8).astype(np.float32)
    bt, bp = {Key(Kind.BUFFER, "bn1.running_mean"): mean}, {Key(Kind.BUFFER, "bn1.running_mean"): mean + np.float32(buffer_gap)}
    result.keys += judge("train", bt, bp, ToleranceConfig().backward).keys
    return result, {**t, **bt}, {**p, **bp}


def test_a_failing_buffer_is_plotted_where_the_failure_is():
    result, t, p = _train_result(buffer_gap=0.01)
    s = plot.spec(result, t, p)
    assert not s["failing_steps"] and s["verdict"] == \
        "MISALIGNED: losses within the band; failing: buffer:bn1.running_mean"
    (panel,) = s["panels"]
    assert panel["key"] == "buffer:bn1.running_mean" and panel["torch"].shape == (8,)
    assert panel["allowed"] == pytest.approx(np.full(8, 1e-4)) and np.all(np.abs(panel["torch"] - panel["paddle"]) > panel["allowed"])
    # the band of the losses is the train check's relative tolerance
    assert s["allowed"][0] == pytest.approx(0.0015 * max(abs(s["torch"][0]), abs(s["paddle"][0])))
    aligned, t2, p2 = _train_result(buffer_gap=0.0)
    assert plot.spec(aligned, t2, p2)["verdict"].startswith("ALIGNED: 12 losses within the band")
    assert not plot.spec(aligned, t2, p2)["panels"]


def test_losses_outside_the_band_are_counted_in_the_verdict():
    result, t, p = _train_result(buffer_gap=0.0, loss_gap=0.01)
    s = plot.spec(result, t, p)
    assert s["failing_steps"] == list(range(12)) and s["verdict"] == "MISALIGNED: 12 of 12 losses outside the band"
