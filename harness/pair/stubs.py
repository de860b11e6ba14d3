"""A framework a process must not hold: hidden from every library, a stand-in for the pair's own code.

A pair module may `import torch` and `import paddle` at the top. The coordinator (which only calls
make_batch) and each worker (which only calls its own side's functions) hide the other framework:
for libraries it is simply not installed (`import torch` raises ModuleNotFoundError,
`importlib.util.find_spec("torch")` is None, nothing is in sys.modules), so scipy, datasets,
transformers and PaddleNLP take their own no-torch paths and never meet anything strange. Only the
pair's own code (the pair module, and the files it imports from outside site-packages and the
standard library: its sibling files, a repository on sys.path) gets stand-ins: its `import torch`
binds a stand-in to its own name, so a class over `torch.nn.Module` defines harmlessly, and code
that reaches across (the classic "torch on both sides" mistake) fails loudly instead of silently
comparing torch with torch. Each process really holds one framework at most.
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import importlib.machinery
import os
import site
import sys
import sysconfig
import types


class MissingFrameworkError(RuntimeError):
    pass


class _Absent:
    """Any attribute, call or subscript yields another stand-in; using a value raises."""

    def __init__(self, path: str, where: str):
        object.__setattr__(self, "_path", path)
        object.__setattr__(self, "_where", where)

    def __getattr__(self, name: str):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return _Absent(f"{self._path}.{name}", self._where)

    def __call__(self, *args, **kwargs):
        return _Absent(f"{self._path}(...)", self._where)

    def __getitem__(self, item):
        return _Absent(f"{self._path}[...]", self._where)

    def __mro_entries__(self, bases):
        # `class Net(torch.nn.Module)` in a process without torch defines a harmless class.
        return (object,)

    # Nothing is an instance of a framework that is not loaded. Libraries that probe sys.modules
    # for torch (scipy's array-API helpers, which paddlenlp imports) then read the stand-in as such.
    def __instancecheck__(self, obj):
        return False

    def __subclasscheck__(self, cls):
        return False

    def __bool__(self):
        return False

    def _fail(self, *args, **kwargs):
        raise MissingFrameworkError(
            f"{self._path} was used in the {self._where}, where {self._path.split('.')[0]} is not "
            f"loaded; each side's functions run only in their own framework's process"
        )

    __iter__ = __len__ = __float__ = __int__ = __index__ = __array__ = _fail
    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = __truediv__ = __matmul__ = _fail

    def __repr__(self):
        return f"<{self._path}: not loaded in the {self._where}>"


class _AbsentModule(types.ModuleType):
    """What the pair's `import torch` binds; never put in sys.modules."""

    def __init__(self, name: str, where: str):
        super().__init__(name)
        self._where = where

    def __getattr__(self, name: str):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return _Absent(f"{self.__name__}.{name}", self._where)

    def __repr__(self):
        return f"<{self.__name__}: not loaded in the {self._where}>"


def is_absent(value) -> bool:
    return isinstance(value, (_Absent, _AbsentModule))


@functools.cache
def pair_builtins(roots: tuple, where: str) -> dict:
    """The builtins of the pair's own code: its `import <root>` (and `from <root>.x import y`)
    yields a stand-in; every other import is the process's own."""

    def guarded_import(name, globals=None, locals=None, fromlist=(), level=0):
        if level == 0 and name.partition(".")[0] in roots:
            return _AbsentModule(name if fromlist else name.partition(".")[0], where)
        return builtins.__import__(name, globals, locals, fromlist, level)

    return {**vars(builtins), "__import__": guarded_import}


@functools.cache
def _library_dirs() -> tuple:
    paths = {sysconfig.get_paths().get(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    paths.update(getattr(site, "getsitepackages", list)())
    paths.add(getattr(site, "getusersitepackages", lambda: None)())
    return tuple(os.path.realpath(p) + os.sep for p in paths if p)


def is_pair_code(origin: str | None) -> bool:
    """A Python source file outside the standard library and every site-packages: the user's own."""
    if not origin or not origin.endswith(".py"):
        return False
    path = os.path.realpath(origin)
    parts = path.split(os.sep)
    return not path.startswith(_library_dirs()) and "site-packages" not in parts and "dist-packages" not in parts


class _PairLoader:
    """A user file's loader, run with the pair's builtins (its imports of `roots` are stand-ins)."""

    def __init__(self, loader, names: dict):
        self._loader, self._builtins = loader, names

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        module.__dict__["__builtins__"] = self._builtins
        self._loader.exec_module(module)

    def __getattr__(self, name):
        return getattr(self._loader, name)


class _Hiding:
    """One finder of sys.meta_path that no longer finds `roots`, and loads the user's files with
    the pair's builtins; every other attribute (invalidate_caches, find_distributions) is its own."""

    def __init__(self, finder, roots: tuple, where: str):
        self._finder, self._roots, self._where = finder, roots, where

    def find_spec(self, fullname, path=None, target=None):
        find = getattr(self._finder, "find_spec", None)
        if fullname.partition(".")[0] in self._roots or find is None:
            return None
        spec = find(fullname, path, target)
        if spec is not None and isinstance(spec.loader, importlib.machinery.SourceFileLoader) \
                and is_pair_code(spec.origin):
            spec.loader = _PairLoader(spec.loader, pair_builtins(self._roots, self._where))
        return spec

    def __getattr__(self, name):
        return getattr(self._finder, name)

    # `sys.meta_path.remove(finder)` and `finder in sys.meta_path` (setuptools' shim does both) find the wrapper
    def __eq__(self, other):
        return other is self or other is self._finder

    def __hash__(self):
        return hash(id(self._finder))


def block(roots: tuple, where: str) -> None:
    """From now on `roots` are hidden in this process (libraries find them not installed), and the
    user's files imported from now on see stand-ins."""
    sys.meta_path[:] = [_Hiding(f, roots, where) for f in sys.meta_path]


@contextlib.contextmanager
def absent(roots: tuple, where: str):
    """`roots` hidden inside the block only: real modules already loaded come back after, and the
    user's files first loaded inside it are forgotten (their stand-ins stay theirs)."""
    saved = {n: sys.modules.pop(n) for n in list(sys.modules) if n.partition(".")[0] in roots}
    before = set(sys.modules)
    block(roots, where)
    try:
        yield
    finally:
        sys.meta_path[:] = [f._finder if isinstance(f, _Hiding) else f for f in sys.meta_path]
        for name in set(sys.modules) - before:
            if isinstance(getattr(sys.modules[name], "__loader__", None), _PairLoader):
                del sys.modules[name]
        sys.modules.update(saved)
