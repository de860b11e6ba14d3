"""Unit tests of the diff engine: every rule of docs/design.md, each able to fail."""

import numpy as np
import pytest

from harness.verdict.diff import compare_arrays, compare_dicts
from harness.verdict.tolerance import Tolerance, ToleranceConfig

TOL = Tolerance(1e-6)


def test_equal_arrays_pass_with_full_statistics():
    a = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    r = compare_arrays("k", a, a.copy(), TOL)
    assert r.passed and r.mean_abs == 0 and r.max_abs == 0 and r.cosine == pytest.approx(1.0) and r.count == 12


def test_one_bad_element_among_many_fails_on_max_and_is_located():
    a = np.zeros((100, 100), np.float32)
    b = a.copy()
    b[42, 7] = 1e-2  # mean |d| = 1e-6: passes reprod_log's mean rule, not ours
    r = compare_arrays("k", a, b, TOL)
    assert r.mean_abs <= 1e-6 and not r.passed
    assert r.worst_index == [42, 7] and "max |d|" in r.reason


@pytest.mark.parametrize("shape_b", [(3, 2), (6,), (2, 3, 1)])
def test_shape_mismatch_fails_never_transposes_or_broadcasts(shape_b):
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = a.T.copy().reshape(shape_b) if shape_b == (3, 2) else a.reshape(shape_b)
    r = compare_arrays("k", a, b, TOL)
    assert not r.passed and "(2, 3)" in r.reason and str(shape_b) in r.reason


def test_dtype_mismatch_fails_with_both_dtypes():
    r = compare_arrays("k", np.zeros(3, np.float32), np.zeros(3, np.float64), TOL)
    assert not r.passed and "float32" in r.reason and "float64" in r.reason


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_on_either_side_fails(bad):
    a = np.ones(5, np.float32)
    b = a.copy()
    b[3] = bad
    for x, y in ((a, b), (b, a), (b, b.copy())):
        r = compare_arrays("k", x, y, TOL)
        assert not r.passed and r.nonfinite and "NaN/Inf" in r.reason


def test_allow_nan_needs_identical_positions():
    a = np.array([1.0, np.nan, 3.0], np.float32)
    allow = Tolerance(1e-6, allow_nan=True)
    assert compare_arrays("k", a, a.copy(), allow).passed
    shifted = np.array([np.nan, 2.0, 3.0], np.float32)
    assert not compare_arrays("k", a, shifted, allow).passed
    assert not compare_arrays("k", a, np.array([1.0, np.inf, 3.0], np.float32), allow).passed


def test_integers_compare_exactly_without_wrapping():
    a = np.array([0, 10], np.uint8)
    b = np.array([255, 10], np.uint8)  # uint8 subtraction would wrap 0 - 255 to 1
    r = compare_arrays("k", a, b, Tolerance(1000.0))
    assert not r.passed and r.max_abs == 255 and "exact" in r.reason
    assert compare_arrays("k", a, a.copy(), TOL).passed
    big = np.array([2**64 - 1], np.uint64)
    assert not compare_arrays("k", big, np.array([0], np.uint64), TOL).passed


def test_bool_compare_exactly():
    assert not compare_arrays("k", np.array([True, False]), np.array([True, True]), TOL).passed


def test_a_check_stopped_by_nan_says_which_key_and_side():
    """Once "first forward (no keys compared)" for a NaN output: the check's reason is what stopped it."""
    nan = np.array([[1.0, np.nan], [np.inf, 2.0]], np.float32)
    res = compare_dicts("forward", {"out": np.ones((2, 2), np.float32)}, {"out": nan}, ToleranceConfig())
    assert not res.passed and res.why == "out: 2 NaN/Inf value(s) (paddle), first at [0, 1]"
    both = compare_dicts("loss", {"loss": np.float32(np.nan), "aux": np.float32(np.nan)},
                         {"loss": np.float32(np.nan), "aux": np.float32(1.0)}, ToleranceConfig())
    assert both.why == "loss: 1 NaN/Inf value(s) (both); 1 more key(s) not compared"


def test_missing_key_fails_by_name_and_empty_check_fails():
    res = compare_dicts("forward", {"a": np.zeros(2), "only_torch": np.zeros(1)}, {"a": np.zeros(2)}, ToleranceConfig())
    bad = res.failing
    assert not res.passed and [k.key for k in bad] == ["only_torch"] and "only in torch" in bad[0].reason
    empty = compare_dicts("forward", {}, {}, ToleranceConfig())
    assert not empty.passed and empty.why == "no keys compared"
    only_empty_arrays = compare_dicts("forward", {"e": np.zeros(0)}, {"e": np.zeros(0)}, ToleranceConfig())
    assert not only_empty_arrays.passed  # nothing was actually compared


def test_relative_mode_for_train_metric():
    tol = Tolerance(0.0, rtol=0.0015)
    assert compare_arrays("acc", np.array(0.800), np.array(0.801), tol).passed  # 0.125 %
    r = compare_arrays("acc", np.array(0.800), np.array(0.802), tol)  # 0.25 %
    assert not r.passed and "rel" in r.reason


def test_per_key_glob_overrides():
    tols = ToleranceConfig(keys={"out.hidden*": Tolerance(1e-3)})
    assert tols.for_key("forward", "out.hidden_states.1").mean == 1e-3
    assert tols.for_key("forward", "out.logits").mean == 1e-6
    a, b = np.zeros(4, np.float32), np.full(4, 1e-4, np.float32)
    res = compare_dicts("forward", {"out.hidden.0": a, "out.logits": a}, {"out.hidden.0": b, "out.logits": b}, tols)
    assert [k.passed for k in res.keys] == [True, False]


def test_class_axis_reversed_fails_even_when_means_agree():
    logits = np.array([[0.1, 0.5, 0.9], [0.3, 0.2, 0.7]], np.float32)
    r = compare_arrays("out", logits, logits[:, ::-1].copy(), TOL)
    assert not r.passed and r.mean_abs > 1e-6


def test_float32_rounding_floor_scales_with_the_values():
    big = np.array(2.7, np.float32)
    near = np.nextafter(np.nextafter(big, np.float32(3)), np.float32(3))  # 2 ulps away: 4.8e-7
    off = np.array(2.7 + 2e-6, np.float32)  # ~8 ulps away at 2.7 ... within the floor
    far = np.array(2.7 + 1e-5, np.float32)  # ~40 ulps: a real difference
    assert compare_arrays("loss", big, near, TOL).passed
    assert compare_arrays("loss", big, off, TOL).passed
    r = compare_arrays("loss", big, far, TOL)
    assert not r.passed
    # float64 gets no floor: 2e-6 apart fails the 1e-6 threshold
    assert not compare_arrays("loss", np.array(2.7), np.array(2.7 + 2e-6), TOL).passed


def test_large_arrays_are_judged_chunk_by_chunk_with_exact_positions():
    """Statistics over several chunks (bounded memory) name the same place a whole-array pass would."""
    from harness.verdict.diff import CHUNK

    n = 2 * CHUNK + 7
    a = np.zeros((n,), np.float32)
    b = a.copy()
    b[CHUNK + 3] = 1e-3
    r = compare_arrays("k", a.reshape(1, n), b.reshape(1, n), TOL)
    assert not r.passed and r.worst_index == [0, CHUNK + 3] and r.count == n
    assert r.mean_abs == pytest.approx(1e-3 / n, rel=1e-6) and r.max_abs == pytest.approx(1e-3, rel=1e-6)
    b[CHUNK + 3] = 0.0
    b[2 * CHUNK + 1] = np.nan
    r = compare_arrays("k", a, b, TOL)
    assert not r.passed and r.nonfinite and "first at [" + str(2 * CHUNK + 1) + "]" in r.reason
    ints = np.arange(n, dtype=np.int64)
    other = ints.copy()
    other[-1] += 1
    r = compare_arrays("k", ints, other, TOL)
    assert not r.passed and r.worst_index == [n - 1] and "1 of" in r.reason
