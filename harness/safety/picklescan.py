"""Checkpoints checked before any worker starts, without building a single object from them.

A pickle runs code only through the callables it names (GLOBAL, STACK_GLOBAL, INST), an extension
code (EXT*) or a persistent id. Here the opcodes of a file are walked as a stream
(pickletools.genops) and every name is held against an allow-list: harness.safety.safeload's for a paddle
.pdparams, and the names torch's weights_only loader admits for a torch file (data.pkl inside its
zip, or the pickles of the legacy format). A file that names anything else is refused with exit 2,
naming the file and the object, before a framework is even imported. The workers still load through
the restricted loaders (safeload, torch weights_only): this is the first line, not the only one.

Standard library only: the coordinator imports this.
"""

from __future__ import annotations

import pickletools
import zipfile
from pathlib import Path

from harness.errors import UsageError
from harness.safety.safeload import ALLOWED_GLOBALS, UnsafeFile, _python3_name

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
_STRING_PUSH = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING", "BINSTRING",
                "SHORT_BINSTRING"}
_MEMO_PUT = {"PUT", "BINPUT", "LONG_BINPUT"}
_MEMO_GET = {"GET", "BINGET", "LONG_BINGET"}
_NO_STACK = {"MEMOIZE", "FRAME", "PROTO"} | _MEMO_PUT  # leave the stack as it was
_LEGACY_PICKLES = 5  # magic number, protocol, sys info, the object, the storage keys


def torch_allows(module: str, name: str) -> bool:
    if f"{module}.{name}" in _TORCH_EXACT:
        return True
    if module == "torch._utils":
        return name.startswith("_rebuild_")
    if module in _TORCH_TYPE_MODULES:
        return name.endswith(("Storage", "Tensor")) or name in _TORCH_PLAIN or name.startswith(_NUMERIC)
    return False


def paddle_allows(module: str, name: str) -> bool:
    return (module, name) in ALLOWED_GLOBALS or (module, name) == ("_codecs", "encode")


def scan_stream(stream, path, *, allows, persistent_ids: bool) -> None:
    """Walks one pickle's opcodes to its STOP; raises UnsafeFile at the first forbidden name."""
    memo, recent = {}, [None, None]  # recent: the values the last two stack-pushing opcodes put there
    for op, arg, _pos in pickletools.genops(stream):
        name = op.name
        if name in ("GLOBAL", "INST"):
            module, _, attr = arg.partition(" ")
            _check(allows, module, attr, path)
        elif name == "STACK_GLOBAL":
            if not all(isinstance(v, str) for v in recent):
                raise UnsafeFile(path, "a global whose name is computed while loading (STACK_GLOBAL)")
            _check(allows, recent[0], recent[1], path)
        elif name.startswith("EXT"):
            raise UnsafeFile(path, f"an extension code ({name} {arg})")
        elif name in ("PERSID", "BINPERSID") and not persistent_ids:
            raise UnsafeFile(path, "a persistent id (pickle PERSID)")
        if name == "MEMOIZE":
            memo[len(memo)] = recent[-1]
        elif name in _MEMO_PUT:
            memo[arg] = recent[-1]
        if name in _NO_STACK:
            continue
        pushed = arg if name in _STRING_PUSH and isinstance(arg, str) else memo.get(arg) if name in _MEMO_GET else None
        recent = [recent[-1], pushed]


def _check(allows, module: str, name: str, path) -> None:
    key = _python3_name(module, name)
    if not allows(*key):
        spelled, shown = f"{module}.{name}", f"{key[0]}.{key[1]}"
        raise UnsafeFile(path, shown if shown == spelled else f"{shown} (written as {spelled})")


def scan_torch(path: Path) -> None:
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            for member in archive.namelist():
                if member.endswith(".pkl"):
                    with archive.open(member) as stream:
                        scan_stream(stream, f"{path}:{member}", allows=torch_allows, persistent_ids=True)
        return
    with open(path, "rb") as stream:  # torch's legacy format: pickles one after the other, then raw data
        for _ in range(_LEGACY_PICKLES):
            scan_stream(stream, path, allows=torch_allows, persistent_ids=True)


def scan_pdparams(path: Path) -> None:
    with open(path, "rb") as stream:
        scan_stream(stream, path, allows=paddle_allows, persistent_ids=False)


def check_checkpoint(path: Path, side: str) -> None:
    """Exit 2 (UsageError), one line, for a checkpoint that names anything its loader must not run."""
    try:
        (scan_torch if side == "torch" else scan_pdparams)(Path(path))
    except UnsafeFile as exc:
        raise UsageError(str(exc)) from None
    except (ValueError, EOFError, OSError, zipfile.BadZipFile, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: not a {side} checkpoint (its pickle cannot be read: {exc})") from None
