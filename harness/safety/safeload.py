"""Read reprod_log .npy files and paddle .pdparams checkpoints without ever running code from them.

Both formats are pickles underneath: reprod_log's .npy is np.save of a dict (an object array whose
payload is a pickle), and a .pdparams is paddle.save of a state dict (a plain pickle). A pickle can
name any importable callable (`os.system`, `builtins.eval`, ...) and have it called while loading, so
`np.load(allow_pickle=True)` and `paddle.load` run whatever a file says. Here every global a pickle
names goes through `RestrictedUnpickler.find_class`, which admits only what rebuilds numpy arrays,
dtypes and scalars and plain containers; anything else raises `UnsafeFile` before it is imported.

numpy and the standard library only: the coordinator imports this, and it must never load a framework.
"""

from __future__ import annotations

import _compat_pickle
import collections
import pickle
from pathlib import Path

import numpy as np
from numpy.lib import format as npy_format

__all__ = ["UnsafeFile", "RestrictedUnpickler", "ALLOWED_GLOBALS", "restricted_load",
           "load_npy_dict", "load_pdparams"]

NOT_REPROD_LOG = "not a reprod_log file (expected np.save of a dict of arrays)"
NAME_TABLE_KEY = "StructuredToParameterName@@"  # paddle.save: structured name -> parameter name
BIG_PARAM_KEY = "UnpackBigParamInfor@@"  # paddle.save, protocol 2/3: tensors over 1 GiB split in slices


class UnsafeFile(ValueError):
    """A file names a global outside the allow-list: loading it could run code, so it is not loaded."""

    def __init__(self, path, forbidden: str):
        self.path = str(path)
        self.forbidden = forbidden
        super().__init__(f"{self.path}: refusing to load: it references {forbidden}, which is not allowed "
                         "in a data file (loading it could run code)")


# numpy's own reconstructors, taken from the objects numpy pickles with, so that the same functions are
# found on numpy 1.x (numpy.core.*) and 2.x (numpy._core.*) without importing the deprecated numpy.core.
_reconstruct = np.empty(0).__reduce__()[0]
_scalar = np.float64(0).__reduce__()[0]
_frombuffer = np.empty(1).__reduce_ex__(5)[0]

# (module, name) in python 3 spelling -> the object it gets. Nothing outside this table is imported.
ALLOWED_GLOBALS: dict = {}
for _core in ("numpy.core", "numpy._core"):
    ALLOWED_GLOBALS[(f"{_core}.multiarray", "_reconstruct")] = _reconstruct  # ndarray.__reduce__: empty array
    ALLOWED_GLOBALS[(f"{_core}.multiarray", "scalar")] = _scalar  # numpy scalar (np.float64(1.5)) from dtype+bytes
    ALLOWED_GLOBALS[(f"{_core}.numeric", "_frombuffer")] = _frombuffer  # ndarray.__reduce_ex__(5): array from a buffer
ALLOWED_GLOBALS.update({
    ("numpy", "ndarray"): np.ndarray,  # the class _reconstruct builds; its __setstate__ fills in the data
    ("numpy", "dtype"): np.dtype,  # every array and scalar pickles its dtype as numpy.dtype(str, ...)
    ("collections", "OrderedDict"): collections.OrderedDict,  # Layer.state_dict() is an OrderedDict
    ("builtins", "tuple"): tuple,  # paddle pickles a Tensor as tuple((name, ndarray))
    ("builtins", "set"): set,  # protocol 2/3 spelling of a set
    ("builtins", "frozenset"): frozenset,  # protocol 2/3 spelling of a frozenset
    ("builtins", "complex"): complex,  # python complex numbers pickle as complex(re, im)
    ("builtins", "bytes"): bytes,  # protocol 2 spelling of b"" (other bytes go through _codecs.encode)
    ("builtins", "bytearray"): bytearray,  # protocol 2-4 spelling of a bytearray
    # ("_codecs", "encode") is admitted below as a stand-in that only does latin-1/utf-8 (protocol 2 bytes)
})
_TEXT_CODECS = {"latin1", "latin_1", "latin-1", "iso-8859-1", "iso8859-1", "l1", "utf-8", "utf8", "utf_8"}


def _python3_name(module: str, name: str) -> tuple:
    """The python 3 (module, name) of a global, as pickle maps protocol 0-2 spellings (__builtin__.set, ...)."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


class RestrictedUnpickler(pickle.Unpickler):
    """pickle.Unpickler that resolves only ALLOWED_GLOBALS; any other global raises UnsafeFile(path, 'module.name')."""

    def __init__(self, file, path="<bytes>", *, encoding: str = "latin1"):
        # latin1, as np.load and paddle.load use it: python 2 str payloads of numpy arrays decode losslessly
        super().__init__(file, encoding=encoding, fix_imports=False)
        self.path = str(path)

    def find_class(self, module: str, name: str):
        key = _python3_name(module, name)
        if key == ("_codecs", "encode"):
            return self._codecs_encode
        try:
            return ALLOWED_GLOBALS[key]
        except KeyError:
            spelled = f"{module}.{name}"
            shown = f"{key[0]}.{key[1]}"
            raise UnsafeFile(self.path, shown if shown == spelled else f"{shown} (written as {spelled})") from None

    def persistent_load(self, pid):
        raise UnsafeFile(self.path, "a persistent id (pickle PERSID)")

    def _codecs_encode(self, obj, encoding: str = "utf-8", errors: str = "strict"):
        # protocol 2 writes bytes as _codecs.encode(str, 'latin1'); other codecs (zlib, ...) are not data
        if not isinstance(obj, str) or not isinstance(encoding, str) or encoding.lower() not in _TEXT_CODECS \
                or errors != "strict":
            raise UnsafeFile(self.path, f"_codecs.encode with encoding {encoding!r}")
        return obj.encode(encoding, errors)


_BAD_PICKLE = (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
               OverflowError)


def restricted_load(file, path="<bytes>"):
    """Unpickle one object from a binary file object with RestrictedUnpickler."""
    return RestrictedUnpickler(file, path).load()


def _unpickle(f, path, what: str):
    try:
        return restricted_load(f, path)
    except UnsafeFile:
        raise
    except _BAD_PICKLE as e:
        raise ValueError(f"{path}: {what}: cannot unpickle it ({type(e).__name__}: {e})") from e


def load_npy_dict(path) -> dict:
    """The dict in a reprod_log .npy (np.save of a dict of arrays), read without np.load(allow_pickle=True).

    The .npy header is parsed here; an object array's pickle payload goes through RestrictedUnpickler.
    Raises UnsafeFile for a file that names anything but numpy/container globals, ValueError for any file
    that is not np.save of a dict.
    """
    path = Path(path)
    with open(path, "rb") as f:
        try:
            version = npy_format.read_magic(f)
            if version == (1, 0):
                shape, _fortran, dtype = npy_format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _fortran, dtype = npy_format.read_array_header_2_0(f)
            elif hasattr(npy_format, "_read_array_header"):  # (3, 0): utf-8 header, no public reader
                shape, _fortran, dtype = npy_format._read_array_header(f, version)
            else:
                raise ValueError(f"unsupported .npy format version {version}")
        except ValueError as e:
            raise ValueError(f"{path}: {NOT_REPROD_LOG}: {e}") from e
        if dtype != np.dtype(object) or tuple(shape) != ():
            raise ValueError(f"{path}: {NOT_REPROD_LOG}: it holds a {dtype} array of shape {tuple(shape)}")
        arr = _unpickle(f, path, NOT_REPROD_LOG)
    value = arr.item() if isinstance(arr, np.ndarray) and arr.dtype == object and arr.shape == () else None
    if not isinstance(value, dict):
        raise ValueError(f"{path}: {NOT_REPROD_LOG}")
    return value


def _join_big_params(state: dict, path) -> None:
    """Undo paddle.save's protocol 2/3 split of tensors over 1 GiB (paddle's _pack_loaded_dict), in place."""
    info = state.pop(BIG_PARAM_KEY)
    if not isinstance(info, dict):
        raise ValueError(f"{path}: malformed {BIG_PARAM_KEY} entry")
    for key, spec in info.items():
        try:
            parts = [state.pop(p) for p in spec["slices"]]
            if not all(isinstance(p, np.ndarray) for p in parts):
                raise TypeError("a slice is not an array")
            state[key] = np.concatenate(parts).reshape(tuple(spec["OriginShape"]))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}: malformed {BIG_PARAM_KEY} entry for {key!r} ({type(e).__name__}: {e})") from e


def load_pdparams(path) -> dict:
    """{structured name: np.ndarray} of a paddle.save(layer.state_dict(), path) file, without running its code.

    The same arrays `paddle.load(path)` gives (`.numpy()` of each tensor; bfloat16 comes back as uint16, as
    paddle stores it). Accepts what paddle 2.x/3.x writes for a state dict: ndarray values (protocol 2-4,
    with the StructuredToParameterName@@ name table, dropped here, and protocol 2/3 big-tensor slices,
    rejoined) and the (name, ndarray) tuples paddle pickles tensors as outside a state dict.
    Raises UnsafeFile for a file that names anything else, ValueError for anything but a dict of tensors.
    """
    path = Path(path)
    with open(path, "rb") as f:
        state = _unpickle(f, path, "not a paddle .pdparams file (expected paddle.save of a state dict)")
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a paddle state dict (expected paddle.save of a state dict): "
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
        if not isinstance(key, str) or not isinstance(value, np.ndarray) or value.dtype.hasobject:
            held = f"{type(value).__name__}" + (f" of {value.dtype}" if isinstance(value, np.ndarray) else "")
            raise ValueError(f"{path}: not a paddle state dict of tensors: entry {key!r} holds a {held}")
        out[key] = value
    return out
