"""Checkpoints checked before any worker starts, without building a single tensor from them.

A pickle runs code only through the callables it names (GLOBAL, STACK_GLOBAL, INST), an extension
code (EXT*) or a persistent id; it takes memory through the sizes it declares. Here a checkpoint is
walked by the bounded machine of harness/safety/bounded.py in its dry mode: stand-ins instead of
arrays and tensors, long byte strings skipped rather than read. Every name is held against an
allow-list (safeload's for a paddle .pdparams; the names torch's weights_only loader admits, as
rules on names, for a torch file), and every size against what the file holds: a .pdparams must be
a dict of non-object arrays whose data is in the file; a torch zip's members must stay inside its
folder, each storage within its record, each tensor within its storage; a legacy torch file's
storages within the bytes after its pickles. A file that fails is refused with exit 2, naming the
file and what is wrong, before a framework is even imported. The workers still load through the
restricted loaders (safeload, torch weights_only): this is the first line, not the only one.

No framework: the coordinator imports this.
"""

from __future__ import annotations

import collections
import os
import zipfile
from pathlib import Path, PurePosixPath

from harness.errors import UsageError
from harness.safety.bounded import (
    APPLY,
    BoundedUnpickler,
    BrokenFile,
    Global,
    Limits,
    Malformed,
    Source,
    UnsafeFile,
    broken,
    elements,
    load,
    numbers,
)
from harness.safety.safeload import NUMPY_GLOBALS, numpy_table, scan_pdparams

# torch's weights_only allow-list (torch/_weights_only_unpickler.py, _get_allowed_globals), as rules
# on names, so that no torch import is needed; tests/test_faults.py holds it against torch's own
_TORCH_EXACT = {"collections.OrderedDict", "collections.Counter", "torch.nn.parameter.Parameter",
                "torch.serialization._get_layout", "torch.Size", "torch.Tensor", "torch.device",
                "_codecs.encode", "builtins.bytearray", "builtins.set", "builtins.complex",
                "torch._tensor._rebuild_from_type_v2", "torch.storage.TypedStorage",
                "torch.storage.UntypedStorage"}
_TORCH_TYPE_MODULES = {"torch", "torch.cuda", "torch.sparse", "torch.cuda.sparse"}
_TORCH_PLAIN = {"bool", "half", "float", "double", "cfloat", "cdouble", "chalf", "bfloat16", "long", "int",
                "short", "uint8", "int8", "qint8", "quint8", "qint32", "quint4x2", "quint2x4", "bits1x8", "bits2x4",
                "bits4x2", "bits8", "bits16", "complex32", "complex64", "complex128", "per_tensor_affine",
                "per_tensor_symmetric", "per_channel_affine", "per_channel_symmetric",
                "per_channel_affine_float_qparams"}
_NUMERIC = ("float", "int", "uint", "float8_", "complex")
_LEGACY_PICKLES = 5  # magic number, protocol, sys info, the object, the storage keys
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_OBJECT = 3  # the one of them that holds tensors (persistent ids)

# bytes per element of torch's dtypes (torch.float32) and typed storages (torch.FloatStorage), by name;
# tests/test_faults.py holds them against torch's own
DTYPE_BYTES = {"float64": 8, "double": 8, "float32": 4, "float": 4, "float16": 2, "half": 2, "bfloat16": 2,
               "complex128": 16, "cdouble": 16, "complex64": 8, "cfloat": 8, "complex32": 4, "chalf": 4,
               "int64": 8, "long": 8, "int32": 4, "int": 4, "int16": 2, "short": 2, "uint16": 2, "uint32": 4,
               "uint64": 8, "qint32": 4, "bits16": 2}  # every other dtype (int8, bool, float8_*, ...) is 1 byte
STORAGE_BYTES = {"Double": 8, "Float": 4, "Half": 2, "BFloat16": 2, "Long": 8, "Int": 4, "Short": 2, "Char": 1,
                 "Byte": 1, "Bool": 1, "ComplexDouble": 16, "ComplexFloat": 8, "QInt8": 1, "QUInt8": 1, "QInt32": 4,
                 "QUInt4x2": 1, "QUInt2x4": 1, "Untyped": 1}
# the torch functions that make a tensor as a view of a storage: (storage, offset, size, stride, ...)
_VIEWS = {"_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_qtensor"}


def torch_allows(module: str, name: str) -> bool:
    if f"{module}.{name}" in _TORCH_EXACT:
        return True
    if module == "torch._utils":
        return name.startswith("_rebuild_")
    if module in _TORCH_TYPE_MODULES:
        return name.endswith(("Storage", "Tensor")) or name in _TORCH_PLAIN or name.startswith(_NUMERIC)
    return False


def paddle_allows(module: str, name: str) -> bool:
    return (module, name) in NUMPY_GLOBALS


# ---------------------------------------------------------------------------- torch, dry

class _Storage:
    """A storage a torch file declares: its bytes, and the size of its elements."""

    def __init__(self, nbytes: int, elsize: int):
        self.nbytes, self.elsize = nbytes, elsize


class _Stand:
    """What any other torch call makes in a dry run (a tensor, a device, a size)."""


def _storage_elsize(stype) -> int:
    name = stype.name.rsplit(".", 1)[-1] if isinstance(stype, Global) else ""
    if not name.endswith("Storage") or name[:-len("Storage")] not in STORAGE_BYTES:
        raise Malformed(f"a storage of unknown type {name or type(stype).__name__}")
    return STORAGE_BYTES[name[:-len("Storage")]]


def _view_cost(storage, offset, size, stride, *rest) -> int:
    """A tensor over a storage: all of it inside, and no more elements than the storage holds (a
    stride-0 view of a billion elements over one float would be made whole when converted)."""
    if not isinstance(storage, _Storage):
        raise TypeError(f"a tensor over a {type(storage).__name__}, not a storage")
    dtype = rest[2] if len(rest) > 2 and isinstance(rest[2], Global) else None  # _rebuild_tensor_v3's dtype
    elsize = DTYPE_BYTES.get(dtype.name.rsplit(".", 1)[-1], 1) if dtype is not None else storage.elsize
    n = elements(size)
    if not isinstance(offset, int) or offset < 0 or not isinstance(stride, tuple) or len(stride) != len(size):
        raise TypeError(f"a tensor with offset {offset!r} and strides {stride!r} for size {size!r}")
    last = offset + sum((d - 1) * elements(s) for d, s in zip(size, stride)) if n else 0
    if n and ((last + 1) * elsize > storage.nbytes or n * elsize > storage.nbytes):
        raise Malformed(f"a tensor of size {tuple(size)} reaches past its storage of {storage.nbytes} bytes")
    return n * elsize


def _generic_cost(*args) -> int:
    """Any other torch call (a storage or tensor class, a Size): 16 bytes for every element its numbers could ask for."""
    return 16 * numbers(args)


def _torch_global(path, module: str, name: str) -> Global | None:
    if not torch_allows(module, name):
        return None
    full = f"{module}.{name}"
    plain = numpy_table(path, dry=True)  # set, complex, bytearray, _codecs.encode, OrderedDict as for numpy
    if (module, name) in plain:
        return plain[(module, name)]
    if full == "collections.Counter":
        return Global(full, lambda x=(): collections.Counter(), plain[("builtins", "tuple")].cost)
    if module == "torch._utils" and name in _VIEWS:
        return Global(full, lambda *args: _Stand(), _view_cost)
    if full in ("torch._utils._rebuild_parameter", "torch._utils._rebuild_parameter_with_state",
                "torch.nn.parameter.Parameter"):
        return Global(full, lambda data=None, *rest: data)
    if full == "torch._tensor._rebuild_from_type_v2":
        return Global(full, APPLY)
    return Global(full, lambda *args: _Stand(), _generic_cost)


_TORCH_BUILDS = ((collections.OrderedDict, lambda machine, inst, state: None),
                 (_Stand, lambda machine, inst, state: None))


class _Storages:
    """The storages a torch pickle's persistent ids declare, each checked against the bytes it is
    read from (a zip record, or the legacy file's tail) and charged once."""

    def __init__(self, records: dict | None):
        self.records, self.seen = records, {}

    def __call__(self, machine: BoundedUnpickler, pid) -> _Storage:
        if not isinstance(pid, tuple) or len(pid) not in (5, 6) or pid[0] not in ("storage", b"storage"):
            raise Malformed(f"a persistent id {str(pid)[:60]} that is no storage")
        stype, key, numel = pid[1], str(pid[2]), pid[4]
        elsize = _storage_elsize(stype)
        if not isinstance(numel, int) or numel < 0:
            raise Malformed(f"storage {key[:40]} declares {numel!r} elements")
        if key not in self.seen:
            nbytes = numel * elsize
            held = self.records.get(key) if self.records is not None else nbytes
            if held is None:
                raise Malformed(f"storage {key[:40]} has no record data/{key[:40]} in the archive")
            if nbytes > held:
                raise Malformed(f"storage {key[:40]} declares {nbytes} bytes; its record holds {held}")
            machine.limits.charge(nbytes, f"storage {key[:40]}")
            self.seen[key] = _Storage(nbytes, elsize)
        storage = self.seen[key]
        view = pid[5] if len(pid) == 6 else None  # legacy: (view key, offset, size) in elements
        if view is None:
            return storage
        if not (isinstance(view, tuple) and len(view) == 3 and all(isinstance(v, int) and v >= 0 for v in view[1:])
                and (view[1] + view[2]) * elsize <= storage.nbytes):
            raise Malformed(f"a view {str(view)[:60]} outside storage {key[:40]}")
        return _Storage(view[2] * elsize, elsize)


def _torch_unpickler(source: Source, limits: Limits, storages: _Storages | None) -> BoundedUnpickler:
    return BoundedUnpickler(source, limits, allowed=lambda m, n: _torch_global(source.path, m, n),
                            builds=_TORCH_BUILDS, persistent=storages, dry=True)


# ---------------------------------------------------------------------------- torch files

NOT_TORCH = "not a torch checkpoint"


def _members(archive: zipfile.ZipFile, path, limits: Limits) -> tuple:
    """(folder, {storage key: bytes}) of torch.save's zip: every member inside one folder, none
    declaring more than the file can hold."""
    names = archive.namelist()
    top = PurePosixPath(names[0]).parts[0] if names and PurePosixPath(names[0]).parts else ""
    for info in archive.infolist():
        parts = PurePosixPath(info.filename).parts
        if info.filename.startswith("/") or ".." in parts or "\\" in info.filename:
            raise BrokenFile(path, f"{NOT_TORCH}: member {info.filename[:100]!r} climbs out of the archive")
        if not parts or parts[0] != top:
            raise BrokenFile(path, f"{NOT_TORCH}: member {info.filename[:100]!r} is outside its folder {top!r}")
        if info.file_size > limits.allowed:
            raise UnsafeFile(path, why=f"member {info.filename[:100]!r} declares {info.file_size} bytes in a file of "
                                       f"{limits.size} (a zip bomb?)")
    if f"{top}/data.pkl" not in names:
        raise BrokenFile(path, f"{NOT_TORCH}: no {top}/data.pkl in the archive")
    prefix = f"{top}/data/"
    return top, {i.filename[len(prefix):]: i.file_size for i in archive.infolist() if i.filename.startswith(prefix)}


def scan_torch(path: Path) -> None:
    size = os.path.getsize(path)
    limits = Limits(path, size)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            top, records = _members(archive, path, limits)
            for info in archive.infolist():
                if info.filename.endswith(".pkl"):
                    storages = _Storages(records) if info.filename == f"{top}/data.pkl" else None
                    with archive.open(info) as stream:
                        source = Source(stream, f"{path}:{info.filename}", info.file_size)
                        load(_torch_unpickler(source, limits, storages), NOT_TORCH)
        return
    with open(path, "rb") as stream:  # torch's legacy format: pickles one after the other, then raw data
        source = Source(stream, path, size)
        storages = _Storages(None)
        values = [load(_torch_unpickler(source, limits, storages if i == _LEGACY_OBJECT else None), NOT_TORCH)
                  for i in range(_LEGACY_PICKLES)]
        if values[0] != _LEGACY_MAGIC:
            raise BrokenFile(path, f"{NOT_TORCH} (neither torch.save's zip nor its legacy format)")
        _legacy_tail(source, storages, values[-1], path)


def _legacy_tail(source: Source, storages: _Storages, keys, path) -> None:
    """After the pickles, each storage's data: an 8-byte count, then its bytes."""
    if not isinstance(keys, list) or not all(str(k) in storages.seen for k in keys):
        raise BrokenFile(path, f"{NOT_TORCH}: its storage keys name storages it does not hold")
    needed = sum(8 + storages.seen[str(k)].nbytes for k in set(map(str, keys)))
    if needed > source.left():
        raise BrokenFile(path, f"{NOT_TORCH}: its storages need {needed} bytes after the pickles, "
                               f"{source.left()} are there (cut short?)")


def check_checkpoint(path: Path, side: str) -> None:
    """Exit 2 (UsageError), one line, for a checkpoint that names anything its loader must not run,
    asks for more memory than it holds, or is not a checkpoint of its kind."""
    try:
        (scan_torch if side == "torch" else scan_pdparams)(Path(path))
    except (UnsafeFile, BrokenFile) as exc:
        raise UsageError(str(exc)) from None
    except (ValueError, EOFError, OSError, zipfile.BadZipFile, UnicodeDecodeError) as exc:
        raise UsageError(str(broken(path, f"not a {side} checkpoint", exc))) from None
