"""The Python API (`from harness import check`) and the pytest plugin (the `reprod` fixture): the
report object comes back, usage errors and worker failures raise typed errors, and a user's own
suite asserts alignment with the summary and first divergence as the failure message."""

import importlib.metadata
import os
import subprocess
import sys

import pytest

from conftest import PAIRS, ROOT
from harness import UsageError, WorkerError, check
from harness.report.runreport import RunReport

BROKEN_PADDLE = """
import numpy as np
import torch, paddle

def build_torch():
    return torch.nn.Linear(4, 2)

def build_paddle():
    raise ValueError("boom in build_paddle")

def make_batch(rng, step):
    return {"x": rng.standard_normal((3, 4), dtype=np.float32), "label": np.zeros(3, dtype=np.int64)}
"""


@pytest.mark.parametrize("kwargs,needle", [
    ({"pair_toml": "nope.toml"}, "nope.toml: config file not found"),
    ({}, "give exactly one of a pair TOML or zoo=NAME"),
    ({"zoo": "mlp", "checks": ["forward", "speed"]}, "unknown check 'speed'"),
    ({"zoo": "mlp", "device": "tpu"}, "device: expected auto, cpu or gpu"),
    ({"zoo": "mlp", "iters": 0}, "iters: must be >= 1"),
    ({"zoo": "mlp", "weights": "w.ckpt"}, "unknown checkpoint type"),
    ({"zoo": "mlp", "dp_equivalence": True}, "give --nprocs 2 or more"),
    ({"zoo": "mlp", "checks": ["forward"], "benchmark": __file__}, "add train to the checks"),
])
def test_usage_errors_raise_before_any_worker_starts(tmp_path, kwargs, needle):
    with pytest.raises(UsageError, match=needle.replace("(", r"\(")):
        check(**kwargs, out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_plugin_is_registered_through_the_pytest11_entry_point():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["entry-points"]["pytest11"] == {"reprod": "harness.pytest_plugin"}
    from harness import pytest_plugin

    assert callable(pytest_plugin.reprod)


@pytest.mark.e2e
def test_check_returns_the_report_and_raises_worker_errors(tmp_path, make_pair):
    report = check(zoo="mlp", checks="forward,loss", out=tmp_path / "mlp")
    assert isinstance(report, RunReport) and report.aligned and report.first_divergence is None
    assert [c.name for c in report.checks] == ["forward", "loss"] and all(c.passed for c in report.checks)
    assert report.out_dir == tmp_path / "mlp" and (tmp_path / "mlp" / "report.html").is_file()
    assert report.text().splitlines()[0] == "ALIGNED  mlp: 2 of 2 checks pass"
    toml = make_pair(BROKEN_PADDLE, '[data]\ninputs = ["x"]\n', name="broken")
    with pytest.raises(WorkerError) as info:
        check(toml, checks=["forward"], out=tmp_path / "broken_out", timeout=60)
    assert info.value.worker == "paddle" and "boom in build_paddle" in info.value.remote_traceback


FAILING_TEST = """
def test_port_with_a_missing_transpose(reprod):
    reprod.assert_aligned({transposed!r}, checks=["forward", "loss"])
"""


def _plugin_args() -> list:
    """Installed (CI: pip install -e .), the entry point loads the plugin by itself; in a checkout
    whose editable install predates the entry point, name the module instead."""
    names = {ep.value for ep in importlib.metadata.entry_points(group="pytest11")}
    return [] if "harness.pytest_plugin" in names else ["-p", "harness.pytest_plugin"]


@pytest.mark.e2e
def test_a_users_suite_asserts_alignment_with_the_plugin(tmp_path):
    """The README's example suite, as printed, beside the README's pair; plus a failing port."""
    from test_readme import _block

    suite = tmp_path / "user_suite"
    suite.mkdir()
    (suite / "pair.py").write_text(_block("python", "# pair.py"))
    (suite / "pair.toml").write_text(_block("toml", "# pair.toml"))
    (suite / "test_port.py").write_text(_block("python", "# test_port.py"))
    (suite / "test_failing.py").write_text(FAILING_TEST.format(transposed=str(PAIRS / "transposed" / "pair.toml")))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *_plugin_args(), str(suite)],
                          cwd=suite, capture_output=True, text=True, timeout=300, env=env)
    out = proc.stdout
    assert proc.returncode == 1 and "1 failed, 2 passed" in out, out + proc.stderr
    failure = out[out.index("test_port_with_a_missing_transpose"):]
    assert "AssertionError: the port is not aligned:" in failure
    assert "MISALIGNED  transposed: 2 of 2 checks fail, first forward" in failure  # the summary
    assert "first divergence: forward (step 0): the difference arises inside (model)" in failure
    assert "reprod.assert_aligned(" in failure and "pytest_plugin.py" not in failure  # the user's line, not ours
