"""The coordinator never loads a framework; each worker loads exactly one."""

import json
import subprocess
import sys

import numpy as np
import pytest

from harness import protocol, stubs

FRAMEWORK_MODULES = ("torch", "paddle", "reprod_log")


def test_coordinator_imports_no_framework():
    code = (
        "import sys, json\n"
        "import harness.cli, harness.coordinator, harness.diff, harness.report, harness.config, harness.weights\n"
        "from harness.data import BatchSource\n"
        "from harness.config import load_zoo\n"
        "cfg = load_zoo('tiny_transformer'); BatchSource(cfg).batch(0)\n"  # loads the pair module
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in %r and not getattr(sys.modules[m], '__reprod_stub__', False))))"
        % (FRAMEWORK_MODULES,)
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_stubbed_framework_fails_loudly_when_used():
    with stubs.absent(("torch",), "test process"):
        import torch  # noqa: F401 - the stand-in

        class Net(torch.nn.Module):  # defining a class over a stand-in is harmless
            pass

        value = torch.zeros(3)
        assert stubs.is_absent(value)
        with pytest.raises(stubs.MissingFrameworkError, match="torch.zeros"):
            value + 1
        with pytest.raises(stubs.MissingFrameworkError):
            np.asarray(value).sum() if False else float(value)
    assert "torch" not in sys.modules or not getattr(sys.modules["torch"], "__reprod_stub__", False)


def test_large_arrays_travel_through_shared_memory(tmp_path):
    big = np.arange(protocol.SHM_MIN_BYTES // 4 + 10, dtype=np.float32)
    small = np.arange(10, dtype=np.int64)
    packed = protocol.pack({"a": big, "b": [small]}, tmp_path)
    assert isinstance(packed["a"], protocol.SharedArray)
    assert isinstance(packed["b"][0], np.ndarray)  # small arrays go through the pipe
    assert len(list(tmp_path.iterdir())) == 1
    back = protocol.unpack(packed, consume=True)
    np.testing.assert_array_equal(back["a"], big)
    np.testing.assert_array_equal(back["b"][0], small)
    assert list(tmp_path.iterdir()) == []  # the receiver consumed the segment
