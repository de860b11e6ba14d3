"""Properties of the diff engine over generated arrays."""

import numpy as np
import pytest

pytest.importorskip("hypothesis", reason="property tests need hypothesis (the [test] extra installs it)")
from hypothesis import assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

from harness.verdict.diff import compare_arrays  # noqa: E402
from harness.verdict.tolerance import Tolerance  # noqa: E402

TOL = Tolerance(1e-6)
finite = hnp.arrays(
    dtype=st.sampled_from([np.float32, np.float64]),
    shape=hnp.array_shapes(min_dims=1, max_dims=3, max_side=6),
    elements=st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, width=32),
)


@settings(max_examples=60, deadline=None)
@given(finite)
def test_an_array_always_matches_itself(a):
    assert compare_arrays("k", a, a.copy(), TOL).passed


@settings(max_examples=60, deadline=None)
@given(finite, st.data(), st.sampled_from([np.nan, np.inf, -np.inf]))
def test_any_injected_nonfinite_fails(a, data, bad):
    b = a.copy()
    idx = data.draw(st.integers(0, b.size - 1))
    b.reshape(-1)[idx] = bad
    assert not compare_arrays("k", a, b, TOL).passed
    assert not compare_arrays("k", b, a, TOL).passed


@settings(max_examples=60, deadline=None)
@given(finite, st.randoms(use_true_random=False))
def test_a_permutation_of_a_non_constant_array_fails(a, rnd):
    flat = a.reshape(-1).copy()
    order = list(range(flat.size))
    rnd.shuffle(order)
    b = flat[order].reshape(a.shape)
    assume(np.max(np.abs(a.astype(np.float64) - b)) > 1e-4)  # the permutation moved a different value
    assert not compare_arrays("k", a, b, TOL).passed


@settings(max_examples=60, deadline=None)
@given(finite, hnp.array_shapes(min_dims=1, max_dims=3, max_side=6))
def test_shape_mismatch_never_passes(a, shape):
    assume(tuple(shape) != a.shape)
    size = int(np.prod(shape))
    b = np.resize(a, size).reshape(shape)
    r = compare_arrays("k", a, b, Tolerance(1e9))
    assert not r.passed and "shape" in r.reason
