"""Import stand-ins for a framework a process must not load.

A pair module may `import torch` and `import paddle` at the top. The coordinator (which only
calls make_batch) and each worker (which only calls its own side's functions) load it with
the other framework replaced by these stand-ins, so each process really holds one framework
at most, and code that reaches across (the classic "torch on both sides" mistake) fails
loudly instead of silently comparing torch with torch.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import sys
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
    def __init__(self, name: str, where: str):
        super().__init__(name)
        self.__path__ = []  # a package, so `import torch.nn.functional` resolves here too
        self.__reprod_stub__ = True
        self._where = where

    def __getattr__(self, name: str):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return _Absent(f"{self.__name__}.{name}", self._where)


class _AbsentFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, roots: tuple, where: str):
        self.roots, self.where = roots, where

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in self.roots:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        return _AbsentModule(spec.name, self.where)

    def exec_module(self, module):
        pass


def is_absent(value) -> bool:
    return isinstance(value, (_Absent, _AbsentModule))


def block(roots: tuple, where: str) -> _AbsentFinder:
    """From now on, `import <root>` (and its submodules) yields stand-ins in this process."""
    finder = _AbsentFinder(roots, where)
    sys.meta_path.insert(0, finder)
    return finder


@contextlib.contextmanager
def absent(roots: tuple, where: str):
    """Stand-ins for `roots` inside the block only; real modules already loaded come back after."""
    saved = {n: sys.modules.pop(n) for n in list(sys.modules) if n.split(".")[0] in roots}
    finder = block(roots, where)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)
        for name in [n for n in sys.modules if n.split(".")[0] in roots]:
            if getattr(sys.modules[name], "__reprod_stub__", False):
                del sys.modules[name]
        sys.modules.update(saved)
