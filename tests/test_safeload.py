"""harness.safety.safeload: reprod_log .npy and paddle .pdparams files are read without running code from them."""

from __future__ import annotations

import ast
import collections
import io
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from numpy.lib import format as npy_format

from harness.safety import safeload
from harness.safety.safeload import UnsafeFile, load_npy_dict, load_pdparams


class Payload:
    """An object whose unpickling calls func(*args): what a malicious checkpoint carries."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def qualname(func) -> str:
    return f"{func.__module__}.{func.__qualname__}"  # how pickle names it (os.system -> posix.system)


def assert_equal_nested(a, b):
    assert type(a) is type(b) or (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)), (type(a), type(b))
    if isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            assert_equal_nested(a[k], b[k])
    elif isinstance(a, (np.ndarray, np.generic)):
        assert a.dtype == b.dtype and np.shape(a) == np.shape(b)
        np.testing.assert_array_equal(a, b)
    else:
        assert a == b


def write_npy(path: Path, obj, version=None) -> Path:
    if version is None:
        np.save(path, obj, allow_pickle=True)
    else:
        with open(path, "wb") as f:
            npy_format.write_array(f, np.array(obj, dtype=object), version=version, allow_pickle=True)
    return path


# --- round trips -------------------------------------------------------------------------------------

def test_reprod_log_dict_round_trips(tmp_path):
    data = {"a": np.arange(3, dtype=np.float32), "b": np.float64(1.5)}
    back = load_npy_dict(write_npy(tmp_path / "x.npy", data))
    assert_equal_nested(back, data)
    assert isinstance(back["a"], np.ndarray) and isinstance(back["b"], np.float64)


def test_nested_and_varied_dicts_round_trip(tmp_path):
    data = {
        "logits": np.random.default_rng(0).standard_normal((2, 3)).astype(np.float16),
        "loss": np.asarray(0.25, dtype=np.float64),  # what reprod_log's add() stores: np.asarray of a scalar
        "ids": np.arange(6, dtype=np.int64).reshape(2, 3),
        "mask": np.array([True, False]),
        "fortran": np.asfortranarray(np.ones((2, 3), dtype=np.float32)),
        "strided": np.arange(10, dtype=np.int32)[::3],
        "c": np.array([1 + 2j], dtype=np.complex64),
        "s": np.array(["ab", "c"]),
        "rec": np.zeros(2, dtype=[("x", "f4"), ("y", "i8", (2,))]),
        "nested": {"inner": {"w": np.ones(2, dtype=np.float32), "n": 3}, "od": collections.OrderedDict(k=[1, 2])},
        "py": [1, 2.5, "s", b"raw", b"", None, (1, 2), {3}, frozenset({4}), 1 + 2j, bytearray(b"ba")],
    }
    back = load_npy_dict(write_npy(tmp_path / "n.npy", data))
    assert_equal_nested(back, data)
    assert back["fortran"].flags.f_contiguous


@pytest.mark.parametrize("version", [(1, 0), (2, 0)])
def test_npy_header_versions(tmp_path, version):
    data = {"a": np.arange(4.0)}
    assert_equal_nested(load_npy_dict(write_npy(tmp_path / "v.npy", data, version=version)), data)


@pytest.mark.parametrize("core", ["numpy.core", "numpy._core"])
def test_numpy_1x_and_2x_spellings_are_both_accepted(tmp_path, core):
    data = {"a": np.arange(3, dtype=np.float32), "b": np.float64(1.5)}
    # a .npy as numpy 1.x writes it (protocol 3): GLOBAL opcodes are text lines, so the module can be respelled
    buf = io.BytesIO()
    npy_format.write_array_header_1_0(buf, {"descr": "|O", "fortran_order": False, "shape": ()})
    body = pickle.dumps(np.array(data, dtype=object), protocol=3)
    body = body.replace(b"numpy._core.", b"numpy.core.").replace(b"numpy.core.", core.encode() + b".")
    assert core.encode() + b".multiarray\n_reconstruct" in body and core.encode() + b".multiarray\nscalar" in body
    raw = tmp_path / "x.npy"
    raw.write_bytes(buf.getvalue() + body)
    assert_equal_nested(load_npy_dict(raw), data)


def test_protocol_2_python2_spellings_are_accepted():
    data = {"a": np.arange(3, dtype=np.int16), "e": b"", "b": b"\x00\xff", "s": {1}, "z": 2j, "x": np.float32(2)}
    blob = pickle.dumps(data, protocol=2).replace(b"cbuiltins\n", b"c__builtin__\n")
    assert b"_codecs\nencode" in blob  # protocol 2 writes bytes as _codecs.encode(str, 'latin1')
    assert_equal_nested(safeload.restricted_load(io.BytesIO(blob)), data)


def test_np_load_with_pickle_is_never_called(tmp_path, monkeypatch):
    path = write_npy(tmp_path / "x.npy", {"a": np.arange(3)})

    def no_load(*a, **k):
        raise AssertionError("np.load called")

    monkeypatch.setattr(np, "load", no_load)
    assert list(load_npy_dict(path)) == ["a"]


# --- not a reprod_log file ---------------------------------------------------------------------------

@pytest.mark.parametrize("obj", [np.arange(3.0), np.array([{"a": 1}, {"b": 2}], dtype=object), [1, 2],
                                 np.array("text", dtype=object)], ids=["float-array", "object-vector", "list", "str"])
def test_non_dict_npy_is_rejected(tmp_path, obj):
    path = tmp_path / "x.npy"
    np.save(path, obj, allow_pickle=True)
    with pytest.raises(ValueError, match="not a reprod_log file \\(expected np.save of a dict of arrays\\)") as e:
        load_npy_dict(path)
    assert not isinstance(e.value, UnsafeFile) and str(path) in str(e.value)


@pytest.mark.parametrize("content", [b"", b"not numpy at all", b"\x93NUMPY\x01\x00"], ids=["empty", "text", "cut"])
def test_garbage_npy_is_a_value_error(tmp_path, content):
    path = tmp_path / "g.npy"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="not a reprod_log file"):
        load_npy_dict(path)


def test_truncated_pickle_is_a_value_error(tmp_path):
    path = write_npy(tmp_path / "t.npy", {"a": np.arange(100)})
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(ValueError, match="cannot unpickle"):
        load_npy_dict(path)


# --- malicious files ---------------------------------------------------------------------------------

def payloads(marker: Path):
    out = {
        "os.system": (os.system, Payload(os.system, f"touch {marker}")),
        "builtins.eval": (eval, Payload(eval, f"__import__('os').system('touch {marker}')")),
        "builtins.exec": (exec, Payload(exec, f"open({str(marker)!r}, 'w').close()")),
        "subprocess.Popen": (subprocess.Popen, Payload(subprocess.Popen, ["touch", str(marker)])),
        "numpy.load": (np.load, Payload(np.load, str(marker))),
        "getattr": (getattr, Payload(getattr, "text", "upper")),
    }
    try:
        from numpy.testing._private.utils import runstring  # exec()s its argument
    except ImportError:
        pass
    else:
        out["numpy.runstring"] = (runstring, Payload(runstring, f"open({str(marker)!r}, 'w').close()", {}))
    return out


PAYLOAD_IDS = list(payloads(Path("m")))


def test_the_os_system_payload_is_live(tmp_path):
    """Control: the payload the next tests feed the loaders really runs a command under plain pickle."""
    marker = tmp_path / "control"
    pickle.loads(pickle.dumps(Payload(os.system, f"touch {marker}")))
    assert marker.exists()


def assert_refused(exc: UnsafeFile, path: Path, func, marker: Path):
    msg = str(exc)
    assert "\n" not in msg
    assert str(path) in msg and exc.path == str(path)
    assert qualname(func) in msg and exc.forbidden.split(" ")[0] == qualname(func)
    assert not marker.exists(), "the payload ran"


@pytest.mark.parametrize("which", PAYLOAD_IDS)
@pytest.mark.parametrize("shape", ["in-dict", "bare"])
def test_malicious_npy_is_refused(tmp_path, which, shape):
    marker = tmp_path / "pwned"
    func, payload = payloads(marker)[which]
    path = tmp_path / "evil.npy"
    obj = {"a": np.arange(3), "evil": payload} if shape == "in-dict" else np.array(payload, dtype=object)
    np.save(path, obj, allow_pickle=True)
    with pytest.raises(UnsafeFile) as e:
        load_npy_dict(path)
    assert isinstance(e.value, ValueError)
    assert_refused(e.value, path, func, marker)


@pytest.mark.parametrize("which", PAYLOAD_IDS)
@pytest.mark.parametrize("protocol", [2, 4])
def test_malicious_pdparams_is_refused(tmp_path, which, protocol):
    marker = tmp_path / "pwned"
    func, payload = payloads(marker)[which]
    path = tmp_path / "evil.pdparams"
    state = {"linear.weight": np.ones((2, 2), dtype=np.float32), "linear.bias": ("linear_0.b_0", payload),
             "StructuredToParameterName@@": {"linear.weight": "linear_0.w_0"}}
    path.write_bytes(pickle.dumps(state, protocol=protocol))
    with pytest.raises(UnsafeFile) as e:
        load_pdparams(path)
    assert_refused(e.value, path, func, marker)


@pytest.mark.parametrize("module,name", [("numpy", "ndarray.tofile"), ("numpy", "dtype.__class__"),
                                         ("builtins", "tuple.__class__"), ("numpy.core.multiarray", "fromfile"),
                                         ("__builtin__", "eval"), ("copy_reg", "_reconstructor"), ("os", "system")])
def test_dotted_and_neighbouring_names_are_refused(tmp_path, module, name):
    # protocol 4 STACK_GLOBAL with a dotted name would walk attributes of an allowed object
    blob = (b"\x80\x04\x8c" + bytes([len(module)]) + module.encode() + b"\x8c" + bytes([len(name)])
            + name.encode() + b"\x93.")
    path = tmp_path / "d.pdparams"
    path.write_bytes(blob)
    with pytest.raises(UnsafeFile) as e:
        load_pdparams(path)
    assert f"{module}.{name}" in str(e.value) and e.value.forbidden.endswith(f"{module}.{name}" + ")" * (
        module in ("__builtin__", "copy_reg")))


def test_codecs_encode_only_does_text_codecs(tmp_path):
    class Zlib:
        def __reduce__(self):
            import _codecs
            return _codecs.encode, ("x", "zlib_codec")

    path = tmp_path / "z.pdparams"
    path.write_bytes(pickle.dumps({"w": Zlib()}, protocol=2))
    with pytest.raises(UnsafeFile, match="_codecs.encode with encoding 'zlib_codec'"):
        load_pdparams(path)


def test_persistent_ids_are_refused(tmp_path):
    path = tmp_path / "p.pdparams"
    path.write_bytes(b"\x80\x02X\x01\x00\x00\x00xQ.")  # BINPERSID
    with pytest.raises(UnsafeFile):
        load_pdparams(path)


# --- .pdparams without paddle ------------------------------------------------------------------------

def test_pdparams_state_dict_formats(tmp_path):
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.zeros(3, dtype=np.float16)
    bf16 = np.array([16256], dtype=np.uint16)  # paddle stores bfloat16 as uint16
    for protocol in (2, 3, 4):
        path = tmp_path / f"p{protocol}.pdparams"
        # what paddle.save(layer.state_dict()) writes: arrays + the name table
        path.write_bytes(pickle.dumps(collections.OrderedDict(
            [("fc.weight", w), ("fc.bias", b), ("h", bf16), ("step", np.int64(3)),
             ("StructuredToParameterName@@", {"fc.weight": "linear_0.w_0", "fc.bias": "linear_0.b_0"})]),
            protocol=protocol))
        back = load_pdparams(path)
        assert list(back) == ["fc.weight", "fc.bias", "h", "step"] and type(back) is dict
        assert_equal_nested(back, {"fc.weight": w, "fc.bias": b, "h": bf16, "step": np.asarray(np.int64(3))})
    # how paddle pickles a Tensor outside a state dict: tuple((name, ndarray))
    path = tmp_path / "t.pdparams"
    path.write_bytes(pickle.dumps({"fc.weight": ("linear_0.w_0", w)}, protocol=4))
    assert_equal_nested(load_pdparams(path), {"fc.weight": w})


def test_pdparams_big_tensor_slices_are_rejoined(tmp_path):
    # paddle.save with protocol 2/3 splits a tensor over 1 GiB into KEY@@.i slices plus an index
    full = np.arange(10, dtype=np.float32).reshape(2, 5)
    flat = full.ravel()
    state = {"small": np.ones(1, dtype=np.float32), "big@@.0": flat[:4], "big@@.1": flat[4:8], "big@@.2": flat[8:],
             "StructuredToParameterName@@": {"small": "a", "big": "b"},
             "UnpackBigParamInfor@@": {"big": {"OriginShape": (2, 5), "slices": ["big@@.0", "big@@.1", "big@@.2"]}}}
    path = tmp_path / "big.pdparams"
    path.write_bytes(pickle.dumps(state, protocol=2))
    back = load_pdparams(path)
    assert sorted(back) == ["big", "small"]
    np.testing.assert_array_equal(back["big"], full)


@pytest.mark.parametrize("obj", [[np.ones(2)], {"model": {"w": np.ones(2)}}, {"epoch": 3}, {"w": np.array([None])}],
                         ids=["list", "nested", "int", "object-array"])
def test_pdparams_that_is_not_a_state_dict(tmp_path, obj):
    path = tmp_path / "x.pdparams"
    path.write_bytes(pickle.dumps(obj, protocol=4))
    with pytest.raises(ValueError, match="not a paddle state dict") as e:
        load_pdparams(path)
    assert not isinstance(e.value, UnsafeFile)


def test_garbage_pdparams_is_a_value_error(tmp_path):
    path = tmp_path / "g.pdparams"
    path.write_bytes(b"\x00\x01 not a pickle")
    with pytest.raises(ValueError, match="not a paddle .pdparams file"):
        load_pdparams(path)


def test_module_is_framework_free():
    """safeload and the machine under it import numpy, the standard library and each other only."""
    from harness.safety import bounded

    for module in (safeload, bounded):
        tree = ast.parse(Path(module.__file__).read_text())
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        imported |= {node.module for node in ast.walk(tree)
                     if isinstance(node, ast.ImportFrom) and node.module and node.level == 0}
        outside = {m for m in imported if m.split(".")[0] not in sys.stdlib_module_names | {"numpy"}}
        assert outside <= {"harness.safety.bounded"}, (module.__name__, outside)


# --- against real paddle -----------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore::UserWarning")  # paddle: BatchNorm tracking, ccache
def test_real_paddle_state_dict_matches_paddle_load(tmp_path):
    paddle = pytest.importorskip("paddle", reason="paddle is not installed in this interpreter")
    paddle.seed(0)

    class Net(paddle.nn.Layer):
        def __init__(self):
            super().__init__()
            self.emb = paddle.nn.Embedding(11, 4)
            self.lstm = paddle.nn.LSTM(4, 5, num_layers=2, direction="bidirect")
            self.fc = paddle.nn.Linear(10, 3)
            self.bn = paddle.nn.BatchNorm1D(3)
            self.fc16 = paddle.nn.Linear(3, 2)
            self.fcbf = paddle.nn.Linear(2, 2)

    net = Net()
    net.fc16.to(dtype="float16")
    net.fcbf.to(dtype="bfloat16")
    net.train()
    net.bn(paddle.randn([4, 3]))  # move the running statistics off their initial values
    for protocol in (4, 3, 2):
        path = tmp_path / f"net{protocol}.pdparams"
        paddle.save(net.state_dict(), str(path), protocol=protocol)
        ours = load_pdparams(path)
        theirs = {k: v.numpy() for k, v in paddle.load(str(path)).items()}
        assert list(ours) == list(theirs) and len(ours) > 20
        assert "StructuredToParameterName@@" not in ours
        for k, v in theirs.items():
            assert ours[k].dtype == v.dtype and ours[k].shape == v.shape, k
            np.testing.assert_array_equal(ours[k], v, err_msg=k)
        assert {k: ours[k].dtype.name for k in ("fc16.weight", "fcbf.weight")} == {"fc16.weight": "float16",
                                                                                  "fcbf.weight": "uint16"}

    # paddle's non-state-dict pickling: each Tensor as tuple((name, ndarray))
    pickle_save = getattr(getattr(paddle.framework, "io", None), "_pickle_save", None)
    if pickle_save is not None:
        path = tmp_path / "tuples.pdparams"
        with open(path, "wb") as f:
            pickle_save(net.fc.state_dict(), f, 4)
        theirs = {k: v.numpy() for k, v in paddle.load(str(path)).items()}
        assert_equal_nested(load_pdparams(path), theirs)
