"""Files of a few hundred bytes that ask for gigabytes: every size a file declares is bounded before
anything is allocated, by the pre-check (before any worker starts) and by the loaders themselves.

Each hostile file is refused with exit 2 in one line naming the file, and the process that reads
it grows by at most a few megabytes (peak RSS, measured in a fresh interpreter).
"""

from __future__ import annotations

import collections
import io
import json
import pickle
import struct
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from numpy.lib import format as npy_format

from conftest import ROOT
from harness.errors import UsageError
from harness.safety import picklescan
from harness.safety.safeload import BrokenFile, UnsafeFile, load_npy_dict, load_pdparams, restricted_load

GIGA = 10 ** 9


# ---------------------------------------------------------------------------- pickles by hand (protocol 2)

def glob(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def num(n: int) -> bytes:
    if -2 ** 31 <= n < 2 ** 31:
        return b"J" + struct.pack("<i", n)
    raw = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def text(s: str) -> bytes:
    return b"X" + struct.pack("<I", len(s)) + s.encode()


def tup(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"


def call(func: bytes, *args: bytes) -> bytes:
    return func + tup(*args) + b"R"


def in_dict(value: bytes, key: str = "w") -> bytes:
    return b"\x80\x02}" + text(key) + value + b"s."


NP = "numpy.core.multiarray"
DTYPE_O = call(glob("numpy", "dtype"), text("O8"), b"\x89", b"\x88")  # numpy.dtype('O8', False, True)
EMPTY_ARRAY = call(glob(NP, "_reconstruct"), glob("numpy", "ndarray"), tup(num(0)), b"U\x01b")

# name -> a pickled value that asks for about a gigabyte (or more) while it loads
BOMBS = {
    "bytes(1e9)": call(glob("__builtin__", "bytes"), num(GIGA)),
    "bytearray(1e9)": call(glob("__builtin__", "bytearray"), num(GIGA)),
    "object array of 1e8 from []": EMPTY_ARRAY + tup(num(1), tup(num(10 ** 8)), DTYPE_O, b"\x89", b"]") + b"b",
    "_reconstruct of 1e9 objects": call(glob(NP, "_reconstruct"), glob("numpy", "ndarray"), tup(num(GIGA)), DTYPE_O),
    "BINBYTES8 of 1 TB": b"\x8e" + struct.pack("<Q", 10 ** 12) + b"xx",
    "BINUNICODE8 of 1 TB": b"\x8d" + struct.pack("<Q", 10 ** 12) + b"xx",
    "BYTEARRAY8 of 1 TB": b"\x96" + struct.pack("<Q", 10 ** 12) + b"xx",
    "scalar of a 1 GB dtype": call(glob(NP, "scalar"), call(glob("numpy", "dtype"), tup(text("V8"), tup(num(GIGA // 8)))),
                                   b"C\x00"),
}
FRAME_BOMB = b"\x80\x04\x95" + struct.pack("<Q", 10 ** 12) + b"N."  # a frame of 1 TB


def npy_of(pickled: bytes) -> bytes:
    """A reprod_log-shaped .npy (a 0-d object array) whose pickle is `pickled`."""
    f = io.BytesIO()
    npy_format.write_array_header_1_0(f, {"descr": "|O", "fortran_order": False, "shape": ()})
    return f.getvalue() + pickled


def torch_zip(data_pkl: bytes, records: dict | None = None) -> bytes:
    f = io.BytesIO()
    with zipfile.ZipFile(f, "w") as z:
        z.writestr("archive/data.pkl", data_pkl)
        z.writestr("archive/version", "3\n")
        for key, raw in (records or {}).items():
            z.writestr(f"archive/data/{key}", raw)
    return f.getvalue()


def storage(key: str, numel: int, kind: str = "FloatStorage") -> bytes:
    """A persistent id as torch.save writes it: ('storage', torch.FloatStorage, key, 'cpu', numel)."""
    return tup(text("storage"), glob("torch", kind), text(key), text("cpu"), num(numel)) + b"Q"


def tensor(pid: bytes, size: tuple, stride: tuple) -> bytes:
    return call(glob("torch._utils", "_rebuild_tensor_v2"), pid, num(0), tup(*map(num, size)), tup(*map(num, stride)),
                b"\x89", call(glob("collections", "OrderedDict"), b")"))


TORCH_BOMBS = {
    "bytearray(1e9)": torch_zip(in_dict(BOMBS["bytearray(1e9)"])),
    "FloatStorage(1e9)": torch_zip(in_dict(call(glob("torch", "FloatStorage"), num(GIGA)))),
    "a storage of 1e9 floats in a 4-byte record": torch_zip(in_dict(tensor(storage("0", GIGA), (1,), (1,))),
                                                            {"0": b"\0" * 4}),
    "a view of 1e9 floats over one": torch_zip(in_dict(tensor(storage("0", 1), (GIGA,), (0,))), {"0": b"\0" * 4}),
    "legacy: a storage of 1e9 floats": b"".join(pickle.dumps(p, protocol=2) for p in (
        0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}))
        + in_dict(tensor(tup(text("storage"), glob("torch", "FloatStorage"), text("0"), text("cpu"), num(GIGA), b"N")
                         + b"Q", (1,), (1,)))
        + pickle.dumps(["0"], protocol=2),
}


# ---------------------------------------------------------------------------- the loaders refuse

@pytest.mark.parametrize("bomb", list(BOMBS))
def test_every_bomb_is_refused_by_the_loaders_and_the_scan(tmp_path, bomb):
    npy, pdparams = tmp_path / "b.npy", tmp_path / "b.pdparams"
    npy.write_bytes(npy_of(in_dict(BOMBS[bomb])))
    pdparams.write_bytes(in_dict(BOMBS[bomb]))
    assert npy.stat().st_size < 400 and pdparams.stat().st_size < 300
    for path, loader in ((npy, load_npy_dict), (pdparams, load_pdparams), (pdparams, picklescan.scan_pdparams)):
        with pytest.raises((UnsafeFile, BrokenFile)) as info:
            loader(path)
        message = str(info.value)
        assert message.startswith(f"{path}: ") and "\n" not in message and len(message) < 400, message


def test_a_frame_declares_nothing_the_file_does_not_hold():
    with pytest.raises(BrokenFile, match="declares 1000000000000 bytes where 2 are left"):
        restricted_load(io.BytesIO(FRAME_BOMB))


@pytest.mark.parametrize("bomb", list(TORCH_BOMBS))
def test_every_torch_bomb_is_refused_by_the_scan(tmp_path, bomb):
    path = tmp_path / "b.pt"
    path.write_bytes(TORCH_BOMBS[bomb])
    assert path.stat().st_size < 1000
    with pytest.raises(UsageError) as info:
        picklescan.check_checkpoint(path, "torch")
    message = str(info.value)
    assert message.startswith(f"{path}") and "\n" not in message and len(message) < 400, message


def test_real_files_stay_well_inside_their_budget(tmp_path):
    """What a real file builds is made of its own bytes: a state dict in every protocol, with a
    tensor saved twice (tied weights) and reprod_log's own layout, loads as before."""
    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    for protocol in (2, 3, 4, 5):
        path = tmp_path / f"s{protocol}.pdparams"
        path.write_bytes(pickle.dumps(collections.OrderedDict(a=w, b=w, c=np.float16(2)), protocol=protocol))
        picklescan.check_checkpoint(path, "paddle")
        assert (load_pdparams(path)["b"] == w).all()
    np.save(tmp_path / "r.npy", {"loss": np.float32(1.5), "out": {"logits": w}}, allow_pickle=True)
    assert (load_npy_dict(tmp_path / "r.npy")["out"]["logits"] == w).all()


# ---------------------------------------------------------------------------- peak memory, end to end

MEASURE = """
import json, resource, sys, tracemalloc
from typer.testing import CliRunner
from harness.cli import app
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
tracemalloc.start()
result = CliRunner().invoke(app, sys.argv[1:])
allocated = tracemalloc.get_traced_memory()[1]
grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(json.dumps({"code": result.exit_code, "output": result.output, "grew_kb": grew, "allocated_kb": allocated // 1024}))
"""


def measured(*args) -> dict:
    """The CLI in a fresh interpreter (what it imports loaded first): its peak RSS growth and the
    most Python and numpy memory it held at once (tracemalloc: allocated, touched or not)."""
    warm = "import harness.report.compare, harness.session, harness.coordinator, harness.mapping.checkpoints\n"
    proc = subprocess.run([sys.executable, "-c", warm + MEASURE, *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _file(tmp_path, kind: str, bomb: str):
    if kind == "npy":
        path, data = tmp_path / "bomb.npy", npy_of(in_dict(BOMBS[bomb]))
    elif kind == "pdparams":
        path, data = tmp_path / "bomb.pdparams", in_dict(BOMBS[bomb])
    else:
        path, data = tmp_path / "bomb.pt", TORCH_BOMBS[bomb]
    path.write_bytes(data)
    return path


CASES = [("compare", "npy", b) for b in ("bytes(1e9)", "object array of 1e8 from []")] + \
        [("--benchmark", "npy", b) for b in ("bytes(1e9)", "object array of 1e8 from []")] + \
        [("--weights", "pdparams", b) for b in ("bytes(1e9)", "object array of 1e8 from []", "BINBYTES8 of 1 TB")] + \
        [("--weights", "pt", b) for b in TORCH_BOMBS]


@pytest.mark.e2e  # no worker starts (that is the point), but each case is a fresh interpreter
@pytest.mark.parametrize("entry,kind,bomb", CASES, ids=[f"{e} .{k}: {b}" for e, k, b in CASES])
def test_no_small_file_makes_the_harness_allocate_more_than_a_few_megabytes(tmp_path, entry, kind, bomb):
    path = _file(tmp_path, kind, bomb)
    assert path.stat().st_size < 600
    args = (("compare", path, path) if entry == "compare" else
            ("run", "--zoo", "mlp", entry, path, "--out", tmp_path / "out"))
    got = measured(*args)
    lines = [line for line in got["output"].splitlines() if line.strip()]
    assert got["code"] == 2 and len(lines) == 1 and lines[0].startswith(f"error: {path}"), got["output"]
    assert "starting the torch and paddle workers" not in got["output"]
    assert got["grew_kb"] < 4096, f"peak RSS grew by {got['grew_kb']} kB"
    assert got["allocated_kb"] < 4096, f"{got['allocated_kb']} kB allocated at the peak"
