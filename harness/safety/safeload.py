"""Read reprod_log .npy files and paddle .pdparams checkpoints without ever running code from them,
and without allocating more than the file can pay for.

Both formats are pickles underneath: reprod_log's .npy is np.save of a dict (an object array whose
payload is a pickle), and a .pdparams is paddle.save of a state dict (a plain pickle). A pickle can
name any importable callable (`os.system`, `builtins.eval`, ...) and have it called while loading, so
`np.load(allow_pickle=True)` and `paddle.load` run whatever a file says. Here every global a pickle
names is looked up in NUMPY_GLOBALS, which admits only what rebuilds numpy arrays, dtypes and scalars
and plain containers; anything else raises `UnsafeFile` before it is imported. Every call those
globals make is charged what it would allocate before it runs (harness/safety/bounded.py), so a
file of a few hundred bytes cannot ask for a gigabyte either.

numpy and the standard library only: the coordinator imports this, and it must never load a framework.
"""

from __future__ import annotations

import _codecs
import collections
import io
import os
from pathlib import Path

import numpy as np
from numpy.lib import format as npy_format

from harness.safety.bounded import (
    Blob,
    BoundedUnpickler,
    BrokenFile,
    Global,
    Limits,
    Source,
    UnsafeFile,
    elements,
    load,
    per_item,
    sized,
)

__all__ = ["UnsafeFile", "BrokenFile", "NUMPY_GLOBALS", "numpy_unpickler", "restricted_load", "load_npy_dict",
           "load_pdparams", "scan_pdparams", "tensors"]

NOT_REPROD_LOG = "not a reprod_log file (expected np.save of a dict of arrays)"
NOT_PDPARAMS = "not a paddle .pdparams file (expected paddle.save of a state dict)"
NOT_PADDLE_CHECKPOINT = "not a paddle checkpoint (expected paddle.save of a state dict)"
NAME_TABLE_KEY = "StructuredToParameterName@@"  # paddle.save: structured name -> parameter name
BIG_PARAM_KEY = "UnpackBigParamInfor@@"  # paddle.save, protocol 2/3: tensors over 1 GiB split in slices
_TEXT_CODECS = {"latin1", "latin_1", "latin-1", "iso-8859-1", "iso8859-1", "l1", "utf-8", "utf8", "utf_8"}

# numpy's own reconstructors, taken from the objects numpy pickles with, so that the same functions are
# found on numpy 1.x (numpy.core.*) and 2.x (numpy._core.*) without importing the deprecated numpy.core.
_reconstruct = np.empty(0).__reduce__()[0]
_scalar = np.float64(0).__reduce__()[0]
_frombuffer = np.empty(1).__reduce_ex__(5)[0]


class ArrayStub:
    """An array a dry run (the pre-check) declared but never made: its shape and dtype."""

    def __init__(self, shape=(0,), dtype=np.dtype(np.int8)):
        self.shape, self.dtype = tuple(shape) if isinstance(shape, (tuple, list)) else (shape,), np.dtype(dtype)


def _array_cost(cls, shape, dtype) -> int:
    """ndarray.__reduce__'s _reconstruct(ndarray, (0,), b'b'): an array of the declared shape, filled later."""
    if cls is not np.ndarray:
        raise TypeError(f"_reconstruct builds a {getattr(cls, '__name__', type(cls).__name__)}, not an array")
    return elements(shape) * max(np.dtype(dtype).itemsize, 1)


def _state(state) -> tuple:
    """(shape, dtype, data) of an ndarray state (version, shape, dtype, is_fortran, data), checked
    against each other: the data must be exactly what the shape declares."""
    if not isinstance(state, tuple) or len(state) not in (4, 5):
        raise TypeError("an array's state must be (version, shape, dtype, is_fortran, data)")
    shape, dtype, _fortran, data = state[-4:]
    if not isinstance(dtype, np.dtype):
        raise TypeError(f"an array's dtype must be a numpy dtype, got {type(dtype).__name__}")
    n = elements(shape)
    if dtype.hasobject:  # numpy makes the n slots before it reads the list
        if not isinstance(data, list) or len(data) != n:
            raise TypeError(f"an object array of {n} elements needs a list of as many")
    elif not isinstance(data, (bytes, bytearray, str, Blob)) or len(data) != n * dtype.itemsize:
        raise TypeError(f"an array of {n} x {dtype.itemsize} bytes with {sized(data)} bytes of data")
    return shape, dtype, data


def _set_array(machine, arr, state) -> None:
    shape, dtype, _data = _state(state)
    machine.limits.charge(elements(shape) * dtype.itemsize, f"an array of shape {shape} and dtype {dtype}")
    if isinstance(arr, ArrayStub):
        arr.shape, arr.dtype = (shape,) if isinstance(shape, int) else tuple(shape), dtype
    else:
        arr.__setstate__(state)


def _frombuffer_cost(buf, dtype, shape, order="C") -> int:
    """ndarray.__reduce_ex__(5): a view of the buffer, which must hold the shape exactly."""
    dt = np.dtype(dtype)
    if sized(buf) != elements(shape) * dt.itemsize or dt.hasobject:
        raise TypeError(f"a buffer of {sized(buf)} bytes for shape {shape} of {dt}")
    return 0


def _scalar_cost(dtype, obj=None) -> int:
    if not isinstance(dtype, np.dtype):
        raise TypeError(f"a scalar's dtype must be a numpy dtype, got {type(dtype).__name__}")
    return dtype.itemsize


def text_encoder(path, dry: bool):
    """_codecs.encode as protocol 2 writes bytes (str, 'latin1'); other codecs (zlib, ...) are not data."""

    def encode(obj, encoding: str = "utf-8", errors: str = "strict"):
        if not isinstance(obj, (str, Blob)) or not isinstance(encoding, str) or encoding.lower() not in _TEXT_CODECS \
                or errors != "strict":
            raise UnsafeFile(path, f"_codecs.encode with encoding {encoding!r}")
        if isinstance(obj, Blob):
            return Blob(obj.nbytes if encoding.lower().startswith("utf") else len(obj))
        return _codecs.encode(obj, encoding, errors)

    return encode


def maybe_blob(make):
    """bytes(x) / bytearray(x) in a dry run: a skipped string stays skipped."""
    return lambda x=b"", *rest: Blob(len(x)) if isinstance(x, Blob) else make(x, *rest)


def numpy_table(path, *, dry: bool) -> dict:
    """(module, name) -> Global: what a numpy or plain-container pickle may name, real or dry."""
    reconstruct = (lambda cls, shape, dtype: ArrayStub()) if dry else _reconstruct
    scalar = (lambda dtype, obj=None: ArrayStub((), dtype)) if dry else _scalar
    frombuffer = (lambda buf, dtype, shape, order="C": ArrayStub(shape, dtype)) if dry else _frombuffer
    byte_string = maybe_blob(bytes) if dry else bytes
    byte_array = maybe_blob(bytearray) if dry else bytearray
    table = {
        ("numpy", "ndarray"): Global("numpy.ndarray", value=np.ndarray),  # only as _reconstruct's class
        ("numpy", "dtype"): Global("numpy.dtype", np.dtype),  # every array and scalar pickles its dtype
        ("collections", "OrderedDict"): Global("collections.OrderedDict", collections.OrderedDict, per_item(64)),
        ("builtins", "tuple"): Global("builtins.tuple", tuple, per_item(64)),  # paddle: a Tensor as tuple((name, arr))
        ("builtins", "set"): Global("builtins.set", set, per_item(64)),  # protocol 2/3 spelling of a set
        ("builtins", "frozenset"): Global("builtins.frozenset", frozenset, per_item(64)),
        ("builtins", "complex"): Global("builtins.complex", complex),  # complex(re, im)
        ("builtins", "bytes"): Global("builtins.bytes", byte_string, per_item(1)),  # protocol 2: b""
        ("builtins", "bytearray"): Global("builtins.bytearray", byte_array, per_item(1)),
        ("_codecs", "encode"): Global("_codecs.encode", text_encoder(path, dry), per_item(4)),  # protocol 2 bytes
    }
    for core in ("numpy.core", "numpy._core"):
        table[(f"{core}.multiarray", "_reconstruct")] = Global(f"{core}.multiarray._reconstruct", reconstruct,
                                                              _array_cost)
        table[(f"{core}.multiarray", "scalar")] = Global(f"{core}.multiarray.scalar", scalar, _scalar_cost)
        table[(f"{core}.numeric", "_frombuffer")] = Global(f"{core}.numeric._frombuffer", frombuffer,
                                                          _frombuffer_cost)
    return table


# every (module, name) a numpy pickle may name, in python 3 spelling; nothing else is imported
NUMPY_GLOBALS = frozenset(numpy_table("", dry=True))


def numpy_unpickler(source: Source, limits: Limits, *, dry: bool) -> BoundedUnpickler:
    table = numpy_table(source.path, dry=dry)
    builds = ((ArrayStub if dry else np.ndarray, _set_array), (np.dtype, lambda m, dt, state: dt.__setstate__(state)))
    return BoundedUnpickler(source, limits, allowed=lambda module, name: table.get((module, name)), builds=builds,
                            dry=dry)


def restricted_load(file, path="<bytes>"):
    """Unpickle one object from a binary file object (from its position to its end)."""
    start = file.tell()
    end = file.seek(0, io.SEEK_END)
    file.seek(start)
    source = Source(file, path, end)
    return load(numpy_unpickler(source, Limits(path, end - start), dry=False), "not a data pickle")


def _opened(f, path) -> tuple:
    size = os.fstat(f.fileno()).st_size
    return Source(f, path, size), Limits(path, size)


def _npy_header(source: Source, path) -> None:
    try:
        version = npy_format.read_magic(source)
        if version == (1, 0):
            shape, _fortran, dtype = npy_format.read_array_header_1_0(source)
        elif version == (2, 0):
            shape, _fortran, dtype = npy_format.read_array_header_2_0(source)
        elif hasattr(npy_format, "_read_array_header"):  # (3, 0): utf-8 header, no public reader
            shape, _fortran, dtype = npy_format._read_array_header(source, version)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
    except ValueError as e:
        raise BrokenFile(path, f"{NOT_REPROD_LOG}: {e}") from e
    if dtype != np.dtype(object) or tuple(shape) != ():
        raise BrokenFile(path, f"{NOT_REPROD_LOG}: it holds a {dtype} array of shape {tuple(shape)}")


def load_npy_dict(path) -> dict:
    """The dict in a reprod_log .npy (np.save of a dict of arrays), read without np.load(allow_pickle=True).

    The .npy header is parsed here; an object array's pickle payload goes through the bounded
    numpy unpickler. Raises UnsafeFile for a file that names anything but numpy/container globals
    or asks for more memory than it holds, BrokenFile (a ValueError) for any file that is not
    np.save of a dict.
    """
    path = Path(path)
    with open(path, "rb") as f:
        source, limits = _opened(f, path)
        _npy_header(source, path)
        arr = load(numpy_unpickler(source, limits, dry=False), NOT_REPROD_LOG)
    value = arr.item() if isinstance(arr, np.ndarray) and arr.dtype == object and arr.shape == () else None
    if not isinstance(value, dict):
        raise BrokenFile(path, NOT_REPROD_LOG)
    return value


def _is_array(value) -> bool:
    return isinstance(value, (np.ndarray, ArrayStub))


def _join_big_params(state: dict, path) -> None:
    """Undo paddle.save's protocol 2/3 split of tensors over 1 GiB (paddle's _pack_loaded_dict), in place."""
    info = state.pop(BIG_PARAM_KEY)
    if not isinstance(info, dict):
        raise BrokenFile(path, f"malformed {BIG_PARAM_KEY} entry")
    for key, spec in info.items():
        try:
            parts = [state.pop(p) for p in spec["slices"]]
            if not all(_is_array(p) for p in parts):
                raise TypeError("a slice is not an array")
            shape = tuple(spec["OriginShape"])
            if sum(elements(p.shape) for p in parts) != elements(shape):
                raise ValueError(f"its slices do not make shape {shape}")
            state[key] = (ArrayStub(shape, parts[0].dtype) if isinstance(parts[0], ArrayStub)
                          else np.concatenate(parts).reshape(shape))
        except (KeyError, TypeError, ValueError) as e:
            raise BrokenFile(path, f"malformed {BIG_PARAM_KEY} entry for {str(key)[:80]!r} "
                                   f"({type(e).__name__}: {e})") from e


def tensors(state, path) -> dict:
    """{structured name: array} of what paddle.save(layer.state_dict()) pickles, or BrokenFile saying
    what else the file holds. Works on real arrays and on a dry run's ArrayStubs alike."""
    if not isinstance(state, dict):
        raise BrokenFile(path, f"not a paddle state dict (expected paddle.save of a state dict): "
                               f"it holds a {type(state).__name__}")
    state = dict(state)
    state.pop(NAME_TABLE_KEY, None)
    if BIG_PARAM_KEY in state:
        _join_big_params(state, path)
    out = {}
    for key, value in state.items():
        if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str):
            value = value[1]  # paddle's Tensor pickle: (tensor.name, ndarray)
        if isinstance(value, np.generic):
            value = np.asarray(value)
        if not isinstance(key, str) or not _is_array(value) or value.dtype.hasobject:
            held = f"{type(value).__name__}" + (f" of {value.dtype}" if _is_array(value) else "")
            raise BrokenFile(path, f"not a paddle state dict of tensors: entry {str(key)[:80]!r} holds "
                                   f"{'an object array' if _is_array(value) and value.dtype.hasobject else 'a ' + held}")
        out[key] = value
    return out


def load_pdparams(path) -> dict:
    """{structured name: np.ndarray} of a paddle.save(layer.state_dict(), path) file, without running its code.

    The same arrays `paddle.load(path)` gives (`.numpy()` of each tensor; bfloat16 comes back as uint16, as
    paddle stores it). Accepts what paddle 2.x/3.x writes for a state dict: ndarray values (protocol 2-4,
    with the StructuredToParameterName@@ name table, dropped here, and protocol 2/3 big-tensor slices,
    rejoined) and the (name, ndarray) tuples paddle pickles tensors as outside a state dict.
    Raises UnsafeFile for a file that names anything else or asks for more memory than it holds,
    BrokenFile (a ValueError) for anything but a dict of tensors.
    """
    path = Path(path)
    with open(path, "rb") as f:
        source, limits = _opened(f, path)
        state = load(numpy_unpickler(source, limits, dry=False), NOT_PDPARAMS)
    return tensors(state, path)


def scan_pdparams(path) -> None:
    """load_pdparams without building an array: every name, length and size checked, the structure
    too, in little memory whatever the file's size (the pre-check before any worker starts)."""
    path = Path(path)
    with open(path, "rb") as f:
        source, limits = _opened(f, path)
        state = load(numpy_unpickler(source, limits, dry=True), NOT_PADDLE_CHECKPOINT)
    tensors(state, path)

