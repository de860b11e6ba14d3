"""`compare` and `report` through typer's CliRunner (in-process), as a user calls them."""

import json
import re

import numpy as np
from typer.testing import CliRunner

from harness.cli import app
from harness.report.artifacts import save_npy

runner = CliRunner()


def _files(tmp_path, b_value):
    a = {"out": np.zeros((4, 3), np.float32), "loss": np.array(1.0, np.float32)}
    b = {"out": np.full((4, 3), b_value, np.float32), "loss": np.array(1.0, np.float32)}
    save_npy(tmp_path / "a.npy", a)
    save_npy(tmp_path / "b.npy", b)
    return tmp_path / "a.npy", tmp_path / "b.npy"


def test_compare_aligned_writes_reprod_log_format(tmp_path):
    a, b = _files(tmp_path, 1e-8)
    res = runner.invoke(app, ["compare", str(a), str(b), "--log", str(tmp_path / "d.log")])
    assert res.exit_code == 0, res.output
    lines = (tmp_path / "d.log").read_text().splitlines()
    assert re.match(r"^\[\d{4}/\d\d/\d\d \d\d:\d\d:\d\d\] root INFO: out: $", lines[0])
    assert lines[1].endswith("\tmean diff: check passed: True, value: 9.99999993922529e-09")  # float32 1e-8
    assert lines[-1].endswith("root INFO: diff check passed")


def test_compare_misaligned_exit_1_and_strict_reason_in_log(tmp_path):
    a, b = _files(tmp_path, 1e-3)
    res = runner.invoke(app, ["compare", str(a), str(b), "--log", str(tmp_path / "d.log"), "--json"])
    assert res.exit_code == 1
    data = json.loads(res.stdout)
    assert data["passed"] is False and data["keys"][0]["key"] == "out" and not data["keys"][0]["passed"]
    log = (tmp_path / "d.log").read_text()
    assert "strict: out: FAILED: mean |d| 0.001 > 1e-06" in log and log.rstrip().endswith("diff check failed")


def test_compare_threshold_option_changes_the_verdict(tmp_path):
    a, b = _files(tmp_path, 1e-3)
    assert runner.invoke(app, ["compare", str(a), str(b), "--threshold", "1e-2"]).exit_code == 0


def test_compare_bad_files_exit_2_naming_the_file(tmp_path):
    a, _ = _files(tmp_path, 0.0)
    res = runner.invoke(app, ["compare", str(a), str(tmp_path / "missing.npy")])
    assert res.exit_code == 2 and "missing.npy: file not found" in res.output
    (tmp_path / "junk.npy").write_text("not numpy")
    res = runner.invoke(app, ["compare", str(a), str(tmp_path / "junk.npy")])
    assert res.exit_code == 2 and "junk.npy: not a reprod_log file" in res.output


def test_report_rerenders_and_exits_by_verdict(tmp_path):
    report = {
        "schema": 1, "name": "x", "aligned": False, "first_divergence": None, "environment": {}, "timing": {},
        "checks": [{"name": "forward", "passed": False, "reason": "1 of 1 keys differ",
                    "keys": [{"key": "out", "passed": False, "reason": "mean |d| 1 > 1e-06", "mean_abs": 1.0,
                              "max_abs": 1.0, "threshold": 1e-6, "max_threshold": 1e-4, "shape": [2], "count": 2}]}],
    }
    (tmp_path / "report.json").write_text(json.dumps(report))
    res = runner.invoke(app, ["report", str(tmp_path)])
    assert res.exit_code == 1 and "forward" in res.output and "MISALIGNED" in res.output
    res = runner.invoke(app, ["report", str(tmp_path / "nothing")])
    assert res.exit_code == 2 and "no report.json" in res.output
