"""pytest plugin (entry point `pytest11: reprod`): alignment as an assertion in a user's own suite.

    def test_port(reprod):
        reprod.assert_aligned("pair.toml")                  # every check
        reprod.assert_aligned("pair.toml", checks=["forward", "loss"])

A relative path is looked up beside the test file first, then from the working directory. The
artifacts (report.json, report.html, ...) go to the test's tmp_path unless `out=` says otherwise.
A misaligned run fails the test with the summary and the first divergence as the message; a bad
config raises harness.UsageError, a failed worker harness.WorkerError."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness import api


class Reprod:
    """The `reprod` fixture's value: `check` returns the RunReport, `assert_aligned` fails the test."""

    def __init__(self, base: Path, tmp_path: Path):
        self.base, self.tmp_path = base, tmp_path

    def _where(self, pair_toml) -> Path | None:
        if pair_toml is None:
            return None
        path = Path(pair_toml)
        beside = self.base / path
        return beside if not path.is_absolute() and beside.is_file() else path

    def check(self, pair_toml=None, **kwargs):
        """harness.check with the artifacts in this test's tmp_path (one folder per call)."""
        if "out" not in kwargs:
            kwargs["out"] = self.tmp_path / f"reprod{len(list(self.tmp_path.glob('reprod*')))}"
        return api.check(self._where(pair_toml), **kwargs)

    def assert_aligned(self, pair_toml=None, **kwargs):
        """Run and fail unless aligned; returns the RunReport when it is."""
        __tracebackhide__ = True  # the user's line is the one to see, not this one
        report = self.check(pair_toml, **kwargs)
        if not report.aligned:
            raise AssertionError("the port is not aligned:\n" + report.text(width=100))
        return report


@pytest.fixture
def reprod(request, tmp_path) -> Reprod:
    return Reprod(Path(request.path).parent, tmp_path)
