"""A pickle machine that allocates nothing a file has not paid for, and calls nothing it was not told to.

A pickle can ask for memory in a few bytes: `bytes(1000000000)`, an array whose declared shape
holds a billion elements, a byte string or frame declaring a terabyte, an object array of 10^8
slots filled from an empty list. So before anything is allocated, every size a file declares is
held against what the file can pay for:

- a byte string, text or frame may declare at most the bytes left in the file (else it is cut);
- every call (an array's shape, a scalar's dtype, `bytes(n)`, `tuple(x)`, an array's state, a
  torch view) is charged what it would allocate, before it runs, against one budget per file:
  GROWTH times the file's size plus SLACK. A real data file builds its arrays from its own bytes
  (twice, for protocol 2's `_codecs.encode`; tied weights view one storage twice), so it stays
  well inside; a file of a few hundred bytes can make the loader allocate at most about 65 KiB.

The machine is CPython's own pure-Python unpickler (`pickle._Unpickler`): the same opcode
semantics as `pickle.load`, with a dict for the memo (a huge LONG_BINPUT index costs nothing)
and these opcodes checked. Globals resolve only through an `allowed` table of Global objects;
what each does when called is its `run`, after its `cost` is charged. With `dry=True` (the scan
before any worker starts) the table's runs build stand-ins instead of data and byte strings of
BLOB_MIN or more are skipped, not read, so a checkpoint of any size is walked in little memory.

numpy and the standard library only: the coordinator, the pre-check and the paddle worker use it.
"""

from __future__ import annotations

import _compat_pickle
import io
import pickle
import struct
from dataclasses import dataclass
from typing import Callable

GROWTH = 4  # a file may make the loader allocate this many times its own size ...
SLACK = 1 << 16  # ... plus this much
BLOB_MIN = 1 << 16  # byte strings at least this long are skipped by a dry run
_CONTINUATION = bytes(range(0x80, 0xC0))  # utf-8 bytes that start no character


class UnsafeFile(ValueError):
    """A file names a global outside the allow-list (loading it could run code), or asks for more
    memory than it can pay for: it is not loaded."""

    def __init__(self, path, forbidden: str | None = None, *, why: str | None = None):
        self.path = str(path)
        self.forbidden = forbidden
        reason = why or (f"it references {forbidden}, which is not allowed in a data file "
                         "(loading it could run code)")
        super().__init__(f"{self.path}: refusing to load: {reason}")


class BrokenFile(ValueError):
    """A file that is not what it should be: cut short, malformed, or holding the wrong things."""

    def __init__(self, path, what: str):
        self.path = str(path)
        super().__init__(f"{self.path}: {what}")


class Malformed(ValueError):
    """What is wrong with a pickle's stream (a length past the end, a call of data, ...): said by
    load() as the BrokenFile it makes of the whole file."""


def shown_size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


class Limits:
    """What one file may make the loader allocate, charged call by call before each runs."""

    def __init__(self, path, size: int):
        self.path, self.size = str(path), size
        self.allowed = GROWTH * size + SLACK
        self.spent = 0

    def charge(self, nbytes: int, what: str) -> None:
        self.spent += nbytes
        if self.spent > self.allowed:
            raise UnsafeFile(self.path, why=(
                f"{what} asks for {shown_size(nbytes)}, more than a file of {shown_size(self.size)} can hold "
                f"(at most {GROWTH}x its size + {SLACK // 1024} KiB in all: a memory bomb, or a broken file)"))


class Source:
    """The file as the unpickler sees it: no read may ask for more than is left before `end`."""

    def __init__(self, file, path, end: int):
        self.file, self.path, self.end = file, str(path), end

    def left(self) -> int:
        return self.end - self.file.tell()

    def _claim(self, n: int) -> int:
        left = self.left()
        if n < 0 or n > left:
            raise Malformed(f"it declares {n} bytes where {left} are left (cut short?)")
        return n

    def read(self, n: int = -1) -> bytes:
        return self.file.read(self._claim(self.left() if n is None or n < 0 else n))

    def readline(self) -> bytes:
        return self.file.readline(self.left())

    def skip(self, n: int, *, text: bool) -> int:
        """Past n bytes without keeping them; returns their length in characters when text (utf-8)."""
        self._claim(n)
        if not text:
            self.file.seek(n, io.SEEK_CUR)
            return n
        chars = 0
        while n:
            chunk = self.file.read(min(n, 1 << 20))
            if not chunk:  # the file shrank under us
                raise Malformed(f"it ends {n} bytes before the text it declares")
            chars += len(chunk.translate(None, _CONTINUATION))
            n -= len(chunk)
        return chars


@dataclass(frozen=True)
class Blob:
    """A byte string or text a dry run skipped: only its lengths are known."""

    nbytes: int
    chars: int | None = None  # text: its length in characters

    def __len__(self) -> int:
        return self.nbytes if self.chars is None else self.chars


@dataclass(frozen=True)
class Global:
    """What a global of the allow-list stands for: called, `cost` is charged first, then `run` runs.
    `value` is the object it names when used as a value (a class passed along, a dtype)."""

    name: str
    run: Callable | None = None  # None: a value only, never called
    cost: Callable | None = None  # (*args) -> bytes the call would allocate; raises for malformed args
    value: object = None


def python3_name(module: str, name: str) -> tuple:
    """The python 3 (module, name) of a global, as pickle maps protocol 0-2 spellings (__builtin__.set, ...)."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


APPLY = object()  # a Global whose run calls its first argument with its third (torch's _rebuild_from_type_v2)


class BoundedUnpickler(pickle._Unpickler):
    """pickle._Unpickler over a Source, with every global, call, state and length checked."""

    def __init__(self, source: Source, limits: Limits, *, allowed: Callable, builds: tuple,
                 persistent: Callable | None = None, dry: bool = False, encoding: str = "latin1"):
        # latin1, as np.load and paddle.load use it: python 2 str payloads of numpy arrays decode losslessly
        super().__init__(source, encoding=encoding, fix_imports=False)
        self.source, self.limits, self.dry = source, limits, dry
        self.path = source.path
        self._allowed, self._builds, self._persistent = allowed, builds, persistent

    # ------------------------------------------------------------------ names and calls
    def find_class(self, module: str, name: str):
        key = python3_name(module, name)
        found = self._allowed(*key)
        if found is None:
            spelled, shown = f"{module}.{name}", f"{key[0]}.{key[1]}"
            raise UnsafeFile(self.path, shown if shown == spelled else f"{shown} (written as {spelled})")
        return found

    def call(self, func, args) -> object:
        if not isinstance(func, Global) or func.run is None:
            what = func.name if isinstance(func, Global) else f"a {type(func).__name__}"
            raise Malformed(f"it calls {what}, which is data, not a function")
        if not isinstance(args, tuple):
            raise Malformed(f"it calls {func.name} with {type(args).__name__} arguments")
        if func.run is APPLY:
            return self.call(args[0] if args else None, args[2] if len(args) > 2 else ())
        args = tuple(a.value if isinstance(a, Global) and a.value is not None else a for a in args)
        if func.cost is not None:
            self.limits.charge(func.cost(*args), f"{func.name}{_shown_args(args)}")
        return func.run(*args)

    def load_reduce(self):
        args = self.stack.pop()
        self.stack[-1] = self.call(self.stack[-1], args)

    def load_newobj(self):
        args = self.stack.pop()
        self.stack[-1] = self.call(self.stack[-1], args)

    def load_newobj_ex(self):
        kwargs, args = self.stack.pop(), self.stack.pop()
        if kwargs:
            raise Malformed("it passes keyword arguments to a constructor (NEWOBJ_EX)")
        self.stack[-1] = self.call(self.stack[-1], args)

    def _instantiate(self, klass, args):
        self.append(self.call(klass, tuple(args)))

    def load_build(self):
        state = self.stack.pop()
        inst = self.stack[-1]
        build = next((fn for kind, fn in self._builds if isinstance(inst, kind)), None)
        if build is None:
            raise Malformed(f"it sets the state of a {type(inst).__name__} (BUILD), which a data file never does")
        build(self, inst, state)

    def persistent_load(self, pid):
        if self._persistent is None:
            raise UnsafeFile(self.path, "a persistent id (pickle PERSID)")
        return self._persistent(self, pid)

    def get_extension(self, code):
        raise UnsafeFile(self.path, f"an extension code ({code})")

    # ------------------------------------------------------------------ lengths
    def _frame_left(self) -> int:
        frame = self._unframer.current_frame
        return 0 if frame is None else len(frame.getbuffer()) - frame.tell()

    def _length(self, fmt: str) -> int:
        """A declared length, refused before anything that size is made when the file cannot hold it."""
        n = struct.unpack(fmt, self.read(struct.calcsize(fmt)))[0]
        left = self._frame_left() + self.source.left()
        if n < 0 or n > left:
            raise Malformed(f"it declares a string of {n} bytes where {left} are left (cut short?)")
        return n

    def _big(self, n: int, text: bool) -> Blob | None:
        """A dry run skips a long string outside any frame, keeping its lengths."""
        if not self.dry or n < BLOB_MIN or self._frame_left():
            return None
        self._unframer.current_frame = None
        chars = self.source.skip(n, text=text)
        return Blob(n, chars if text else None)

    def _bytes(self, fmt: str) -> None:
        n = self._length(fmt)
        self.append(self._big(n, text=False) or self.read(n))

    def _text(self, fmt: str) -> None:
        n = self._length(fmt)
        self.append(self._big(n, text=True) or str(self.read(n), "utf-8", "surrogatepass"))

    def load_binbytes(self):
        self._bytes("<I")

    def load_binbytes8(self):
        self._bytes("<Q")

    def load_bytearray8(self):
        n = self._length("<Q")
        blob = self._big(n, text=False)
        self.append(blob if blob is not None else bytearray(self.read(n)))

    def load_binunicode(self):
        self._text("<I")

    def load_binunicode8(self):
        self._text("<Q")

    def load_binstring(self):
        n = self._length("<i")
        blob = self._big(n, text=False)  # latin1: a character per byte
        self.append(Blob(n, n) if blob is not None else self._decode_string(self.read(n)))

    def load_readonly_buffer(self):
        if not isinstance(self.stack[-1], Blob):
            super().load_readonly_buffer()



BoundedUnpickler.dispatch = {**pickle._Unpickler.dispatch, **{code[0]: getattr(BoundedUnpickler, name) for code, name in (
    (pickle.REDUCE, "load_reduce"), (pickle.NEWOBJ, "load_newobj"), (pickle.NEWOBJ_EX, "load_newobj_ex"),
    (pickle.BUILD, "load_build"), (pickle.BINBYTES, "load_binbytes"), (pickle.BINBYTES8, "load_binbytes8"),
    (pickle.BYTEARRAY8, "load_bytearray8"), (pickle.BINUNICODE, "load_binunicode"),
    (pickle.BINUNICODE8, "load_binunicode8"), (pickle.BINSTRING, "load_binstring"),
    (pickle.READONLY_BUFFER, "load_readonly_buffer"))}}


# what an unpickling error looks like when the file, not the machine, is at fault
BAD_PICKLE = (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
              OverflowError, struct.error, UnicodeDecodeError, RecursionError, MemoryError)


def load(unpickler: BoundedUnpickler, what: str):
    """unpickler.load(), with any failure the file causes said as one line naming the file."""
    try:
        return unpickler.load()
    except (UnsafeFile, BrokenFile):
        raise
    except BAD_PICKLE as e:
        raise broken(unpickler.path, what, e) from e


def broken(path, what: str, exc: BaseException) -> BrokenFile:
    """`<path>: <what>: cannot unpickle it (<why>)`, one line however long the cause's message."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    text = text if len(text) <= 200 else text[:200] + "..."
    return BrokenFile(path, f"{what}: cannot unpickle it ({text if isinstance(exc, Malformed) else f'{type(exc).__name__}: {text}'})")


def _shown_args(args: tuple) -> str:
    text = "(" + ", ".join(repr(a) if isinstance(a, (int, float, str, tuple)) else type(a).__name__
                           for a in args) + ")"
    return text if len(text) <= 80 else text[:77] + "...)"


# ---------------------------------------------------------------------------- costs shared by every table

def elements(shape) -> int:
    """The element count of a declared shape (an int or a tuple of ints >= 0)."""
    dims = (shape,) if isinstance(shape, int) else shape
    if not isinstance(dims, (tuple, list)) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                     for d in dims):
        raise TypeError(f"a shape must be a tuple of sizes, got {type(shape).__name__}")
    count = 1
    for d in dims:
        count *= d
    return count


def sized(x) -> int:
    """len(x) for what a constructor copies; a count or an unsized argument is no data."""
    if isinstance(x, int):
        return x
    if not hasattr(x, "__len__"):
        raise TypeError(f"cannot build from a {type(x).__name__}")
    return len(x)


def per_item(size: int) -> Callable:
    """cost of a container built from its first argument: `size` bytes per item."""
    return lambda x=(), *rest: size * sized(x)


def numbers(args, depth: int = 0) -> int:
    """The largest count among a call's arguments: an int, or the product of a tuple of ints (a shape)."""
    biggest = 0
    for a in args:
        if isinstance(a, int) and not isinstance(a, bool):
            biggest = max(biggest, abs(a))
        elif isinstance(a, (tuple, list)) and depth < 4:
            biggest = max(biggest, numbers(a, depth + 1))
            if a and all(isinstance(d, int) and not isinstance(d, bool) for d in a):
                biggest = max(biggest, elements(tuple(abs(d) for d in a)))
    return biggest
