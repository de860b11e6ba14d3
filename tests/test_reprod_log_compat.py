"""Compatibility with the real reprod_log, and one test per known defect of it that ours lacks."""

import logging
import re

import numpy as np
import pytest

reprod_log = pytest.importorskip("reprod_log")  # the [paddle] extra installs it; CI always has it
from reprod_log import ReprodDiffHelper, ReprodLogger  # noqa: E402

from harness.report.artifacts import diff_log_lines, save_npy  # noqa: E402
from harness.report.compare import load_side  # noqa: E402
from harness.verdict.diff import compare_dicts  # noqa: E402
from harness.verdict.tolerance import Tolerance  # noqa: E402

STAMP = re.compile(r"^\[\d{4}/\d\d/\d\d \d\d:\d\d:\d\d\] ")


@pytest.fixture(autouse=True)
def _fresh_reprod_logger():
    """reprod_log adds handlers to the 'root' logger at every report(); keep tests independent."""
    logger = logging.getLogger("root")
    saved = list(logger.handlers)
    yield
    for h in list(logger.handlers):
        if h not in saved:
            logger.removeHandler(h)
            h.close()


def _pair():
    rng = np.random.default_rng(0)
    a = {"logits": rng.standard_normal((4, 3)).astype(np.float32), "loss": np.array(0.5, np.float32)}
    b = {k: np.asarray(v + np.float32(1e-8), dtype=np.float32) for k, v in a.items()}
    return a, b


def _reprod_report(a, b, path, threshold=1e-6):
    helper = ReprodDiffHelper()
    helper.compare_info(a, b)
    helper.report(diff_threshold=threshold, path=str(path))
    return helper


def test_our_npy_loads_in_reprod_log_with_the_same_means(tmp_path):
    a, b = _pair()
    save_npy(tmp_path / "a.npy", a)
    save_npy(tmp_path / "b.npy", b)
    helper = ReprodDiffHelper()
    la, lb = helper.load_info(str(tmp_path / "a.npy")), helper.load_info(str(tmp_path / "b.npy"))
    helper.compare_info(la, lb)
    ours = compare_dicts("forward", a, b, Tolerance(1e-6))
    for k in ours.keys:
        assert helper.diff_dict[k.key]["mean"] == pytest.approx(k.mean_abs, rel=1e-5, abs=1e-12)
        assert helper.diff_dict[k.key]["max"] == pytest.approx(k.max_abs, rel=1e-5, abs=1e-12)


def test_reprod_log_files_load_in_compare(tmp_path):
    a, _ = _pair()
    logger = ReprodLogger()
    for k, v in a.items():
        logger.add(k, v)
    logger.save(str(tmp_path / "theirs.npy"))
    loaded = load_side(tmp_path / "theirs.npy")
    assert set(loaded) == set(a) and all(np.array_equal(loaded[k], a[k]) for k in a)


def test_log_lines_match_reprod_log_line_for_line(tmp_path):
    a, b = _pair()
    _reprod_report(a, b, tmp_path / "theirs.log")
    theirs = [STAMP.sub("", line) for line in (tmp_path / "theirs.log").read_text().splitlines()]
    ours = [STAMP.sub("", line) for line in diff_log_lines(compare_dicts("forward", a, b, Tolerance(1e-6)), a, b)]
    assert ours == theirs
    assert all(STAMP.match(line) for line in diff_log_lines(compare_dicts("forward", a, b, Tolerance(1e-6)), a, b))


# ---- one test per defect: reprod_log's real answer, then ours on the same arrays ----

def _theirs_passed(a, b, tmp_path, threshold=1e-6) -> bool:
    _reprod_report(a, b, tmp_path / "d.log", threshold)
    return (tmp_path / "d.log").read_text().strip().endswith("diff check passed")


def test_defect_nan_passes_in_reprod_log(tmp_path):
    a = {"x": np.array([1.0, np.nan], np.float32)}
    b = {"x": np.array([1.0, 2.0], np.float32)}
    assert _theirs_passed(a, b, tmp_path)  # "check passed: True, value: nan"
    assert not compare_dicts("forward", a, b, Tolerance(1e-6)).passed


def test_defect_transposed_shape_passes_in_reprod_log(tmp_path):
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    a, b = {"w": x}, {"w": x.T.copy()}
    assert _theirs_passed(a, b, tmp_path)
    r = compare_dicts("forward", a, b, Tolerance(1e-6))
    assert not r.passed and "shape" in r.keys[0].reason


def test_defect_broadcast_passes_in_reprod_log(tmp_path):
    a, b = {"y": np.full((90,), 0.5, np.float32)}, {"y": np.full((90, 1), 0.5, np.float32)}
    assert _theirs_passed(a, b, tmp_path)
    assert not compare_dicts("forward", a, b, Tolerance(1e-6)).passed


def test_defect_uint8_wraps_in_reprod_log(tmp_path):
    a, b = {"ids": np.array([0, 10], np.uint8)}, {"ids": np.array([255, 10], np.uint8)}
    helper = ReprodDiffHelper()
    helper.compare_info(a, b)
    assert helper.diff_dict["ids"]["max"] == 1  # 0 - 255 wrapped; the truth is 255
    assert _theirs_passed(a, b, tmp_path, threshold=1.0)
    r = compare_dicts("forward", a, b, Tolerance(1.0))
    assert not r.passed and r.keys[0].max_abs == 255


def test_defect_mean_only_hides_one_bad_element(tmp_path):
    a = {"h": np.zeros((100, 100), np.float32)}
    b = {"h": a["h"].copy()}
    b["h"][3, 4] = 1e-2
    assert _theirs_passed(a, b, tmp_path)
    assert not compare_dicts("forward", a, b, Tolerance(1e-6)).passed


def test_defect_missing_key_is_a_bare_assert(tmp_path):
    a, b = {"x": np.zeros(2), "extra": np.zeros(1)}, {"x": np.zeros(2)}
    with pytest.raises(AssertionError) as info:
        ReprodDiffHelper().compare_info(a, b)
    assert "extra" not in str(info.value)  # it does not even name the key
    r = compare_dicts("forward", a, b, Tolerance(1e-6))
    assert not r.passed and r.failing[0].key == "extra"


def test_defect_report_returns_nothing_and_duplicates_lines(tmp_path):
    a, b = _pair()
    helper = ReprodDiffHelper()
    helper.compare_info(a, b)
    assert helper.report(path=str(tmp_path / "one.log")) is None
    helper.report(path=str(tmp_path / "two.log"))
    one = (tmp_path / "one.log").read_text().splitlines()
    assert len(one) == 2 * len((tmp_path / "two.log").read_text().splitlines())  # second report leaked in
    result = compare_dicts("forward", a, b, Tolerance(1e-6))
    first, second = diff_log_lines(result, a, b), diff_log_lines(result, a, b)
    assert len(first) == len(second) and result.passed is True
