"""doctor probes each framework in its own interpreter and says how to install a missing one."""

import pytest

from conftest import cli

pytestmark = pytest.mark.e2e  # each test imports both frameworks in subprocesses


def test_doctor_reports_both_frameworks():
    proc = cli("doctor", timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = {line.split()[0]: line for line in proc.stdout.splitlines() if line.strip()}
    for name in ("python", "numpy", "torch", "paddle"):
        assert name in lines, proc.stdout
    assert "CPU build" in lines["torch"] or "CUDA" in lines["torch"]


def test_doctor_exits_nonzero_with_hint_when_a_framework_is_missing(tmp_path):
    broken = tmp_path / "torch"
    broken.mkdir()
    (broken / "__init__.py").write_text("raise ImportError('simulated: torch is not installed')\n")
    proc = cli("doctor", env={"PYTHONPATH": str(tmp_path)}, timeout=180)
    assert proc.returncode == 1
    assert "simulated: torch is not installed" in proc.stdout
    assert 'pip install -e ".[torch]"' in proc.stdout
