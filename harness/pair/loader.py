"""Loading a user's pair module, in whichever process, without the frameworks it must not see."""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import traceback
from pathlib import Path
from types import ModuleType

from harness.errors import UsageError
from harness.pair import stubs

FRAMEWORKS = ("torch", "paddle")
# Libraries that import a framework on their own; in a process without it they must not load.
_COMPANIONS = {"torch": ("torch", "torchvision", "torchaudio"),
               "paddle": ("paddle", "paddlenlp", "paddleformers", "reprod_log")}


def blocked_roots(keep: str | None) -> tuple:
    return tuple(r for fw in FRAMEWORKS if fw != keep for r in _COMPANIONS[fw])


def user_traceback(exc: BaseException) -> str:
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


def load(path: Path, *, keep: str | None, where: str, guard=contextlib.nullcontext) -> ModuleType:
    """Import the pair module; `guard` is the context that keeps the other framework out, if the
    process does not already (a worker hides it for good). The module's own imports of a framework
    the process does not hold bind stand-ins (harness/pair/stubs.py)."""
    name = f"reprod_pair_{keep or 'data'}_{abs(hash(str(path)))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None:  # not a .py: no loader for it
        raise UsageError(f"{path}: not a Python module (the pair module is a .py file)")
    module = importlib.util.module_from_spec(spec)
    module.__dict__["__builtins__"] = stubs.pair_builtins(blocked_roots(keep), where)
    sys.modules[name] = module
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))  # the pair may import its sibling files
    try:
        with guard():
            spec.loader.exec_module(module)
    except Exception as exc:
        hint = ""
        if isinstance(exc, (stubs.MissingFrameworkError, AttributeError, TypeError, ImportError)):
            others = " and ".join(fw for fw in FRAMEWORKS if fw != keep)
            hint = (
                f" (the {where} loads the pair without {others}: move imports of framework-based "
                "libraries into the build_*/forward_* functions)"
            )
        raise UsageError(
            f"{path}: failed to import in the {where}: {type(exc).__name__}: {exc}{hint}", user_traceback(exc)
        ) from None
    return module


def require(module: ModuleType, path: Path, names) -> None:
    missing = [n for n in names if not callable(getattr(module, n, None))]
    if missing:
        raise UsageError(f"{path}: pair module must define {', '.join(missing)} (see `reprod-harness init`)")
