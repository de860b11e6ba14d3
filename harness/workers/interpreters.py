"""Each worker's Python: the coordinator's own by default, or another environment's interpreter
(--torch-python / --paddle-python, [workers] in the TOML), so torch's stack and paddle's need not
share one environment. The harness must be installed in each (its dependencies carry the pipe's
numpy, multiprocess and dill): each worker imports its environment's own copy. Before any worker
starts, a handshake runs every such interpreter once and stops the run with both values named
when something that crosses between the processes would not read the same on every side."""

from __future__ import annotations

import inspect
import json
import operator
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from harness.errors import UsageError

PROBE_TIMEOUT_S = 120.0  # a cold import of numpy on a slow disk, with room to spare


@dataclass(frozen=True)
class Interpreter:
    path: str  # absolute, never resolved: a venv's python is a symlink whose place names the venv
    origin: str  # where it was given, as errors name it: "--torch-python", "pair.toml:4: workers.torch_python"

    @classmethod
    def given(cls, path: str | Path, origin: str, *, base: Path | None = None) -> Interpreter:
        """A path as the user gave it (relative to `base`, else to the working folder), checked to exist."""
        full = Path(os.path.expanduser(str(path)))
        full = Path(os.path.abspath((base or Path.cwd()) / full))
        if not full.exists():
            raise UsageError(f"{origin}: {path}: not found (the Python interpreter of a worker's environment, "
                             "like .venv-torch/bin/python)")
        if full.is_dir() or not os.access(full, os.X_OK):
            raise UsageError(f"{origin}: {path}: not an executable file (expected a Python interpreter)")
        return cls(str(full), origin)


def describe() -> dict:
    """What this interpreter carries across to the others. Run here for the coordinator, and from
    its source in each worker's interpreter (so it imports nothing of the harness at module level)."""
    import sys

    info = {"executable": sys.executable, "prefix": sys.prefix, "python": "%d.%d.%d" % sys.version_info[:3]}
    for name, read in (("numpy", lambda: __import__("numpy").__version__),
                       ("harness", lambda: __import__("harness").__version__),
                       ("multiprocess", lambda: __import__("multiprocess").__version__),
                       ("pickle", lambda: __import__("dill").settings["protocol"])):
        try:
            info[name] = read()
        except Exception as exc:  # noqa: BLE001 - whatever stops the import is what the user must fix
            info.setdefault("missing", f"{name}: {type(exc).__name__}: {exc}")
    return info


PROBE = inspect.getsource(describe) + "\nimport json\nprint(json.dumps(describe()))\n"


def _minor(version: str) -> tuple:
    return tuple(int(part) for part in version.split(".")[:2] if part.isdigit())


def _same_minor(a: str, b: str) -> bool:
    return _minor(a) == _minor(b)


def _same_major(a: str, b: str) -> bool:
    return _minor(a)[:1] == _minor(b)[:1]


def _readable(a: str, b: str) -> bool:
    """Arrays pickled by one numpy load in the other: the same major, or numpy 1.26 beside 2.x
    (1.26 has the numpy._core that 2.x's pickles name)."""
    return _same_major(a, b) or min(_minor(a), _minor(b)) >= (1, 26)


# What must agree, checked in this order: (key, what it is, agree(a, b), between whom, why). The
# workers compute the same things on both sides (numpy 2 promotes types otherwise than 1.x); the
# coordinator only passes arrays on and compares them, so its numpy need only read theirs.
MUST_MATCH = (
    ("python", "Python minor version", _same_minor, "all", "objects cross between them pickled"),
    ("harness", "reprod-harness version", operator.eq, "all", "each process runs its own environment's copy of "
     "the harness: install the same one in each (pip install -e CHECKOUT)"),
    ("pickle", "pickle protocol of the pipe (dill)", operator.eq, "all", "every message is pickled with it"),
    ("numpy", "numpy major version", _same_major, "workers",
     "both sides compute with numpy, whose type promotion changed in 2.0: install the same numpy in both"),
    ("numpy", "numpy version", _readable, "all", "arrays cross pickled, which numpy older than 1.26 cannot "
     "read from numpy 2"),
)


def describe_all(chosen: dict) -> dict:
    """side -> describe() of its interpreter (the coordinator's own where none is chosen), the
    chosen ones probed at once; a probe that could not run has {"error": ...}."""
    own = describe()
    running = {side: _start_probe(interp) for side, interp in chosen.items()}
    infos = {}
    for side in ("torch", "paddle"):
        if side in running:
            infos[side] = _finish_probe(chosen[side], *running[side])
        else:
            infos[side] = dict(own, interpreter="the coordinator's")
    infos["coordinator"] = own
    return infos


def _start_probe(interp: Interpreter):
    try:
        return subprocess.Popen([interp.path, "-c", PROBE], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL, text=True), None
    except OSError as exc:
        return None, exc


def _finish_probe(interp: Interpreter, proc, failed: OSError | None) -> dict:
    where = {"interpreter": interp.path, "origin": interp.origin}
    if failed is not None:
        return dict(where, error=f"cannot run it: {failed.strerror or failed}")
    try:
        out, err = proc.communicate(timeout=PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return dict(where, error=f"no answer within {PROBE_TIMEOUT_S:.0f} s")
    try:
        return dict(json.loads(out.strip().splitlines()[-1]), **where)
    except (ValueError, IndexError):
        last = (err.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        return dict(where, error=f"not a Python interpreter that runs ({last})")


def check(infos: dict) -> None:
    """UsageError (exit 2) for an interpreter that cannot serve as a worker, or for the first value
    that differs, naming both sides and both values (a Python of another version first: it is the
    likely cause of whatever else is missing there)."""
    for side in ("torch", "paddle"):
        if "error" in infos[side]:
            raise UsageError(f"{infos[side]['origin']}: {infos[side]['interpreter']}: {infos[side]['error']}")
    roles = [(side, infos[side]) for side in ("torch", "paddle", "coordinator")]
    for key, what, agree, between, why in MUST_MATCH:
        pairs = [(roles[0], roles[1])] + ([(a, roles[2]) for a in roles[:2]] if between == "all" else [])
        for (role_a, a), (role_b, b) in pairs:
            if key in a and key in b and not agree(a[key], b[key]):
                raise UsageError(f"the {what} differs: {_named(role_a, a)} has {a[key]}, "
                                 f"{_named(role_b, b)} has {b[key]} ({why})")
    for side in ("torch", "paddle"):
        info = infos[side]
        if "missing" in info:
            python = info["interpreter"] if "origin" in info else info["executable"]
            raise UsageError(f"{info.get('origin', 'the coordinator')}: {python}: cannot import {info['missing']}; the "
                             f"harness must be installed in each worker's environment: {python} -m pip install "
                             f"{install_hint(infos['coordinator']['harness'])}")


def _named(role: str, info: dict) -> str:
    if role == "coordinator":
        return f"the coordinator ({info['executable']})"
    if "origin" in info:
        return f"the {role} worker ({info['origin']} {info['interpreter']})"
    return f"the {role} worker (the coordinator's interpreter)"


def install_hint(version: str) -> str:
    """How to put this harness into another environment: this checkout editable, else this release."""
    root = Path(__file__).resolve().parents[2]
    if (root / "pyproject.toml").is_file():
        return f"-e {root}"
    return f"reprod-harness=={version}"


def handshake(chosen: dict) -> dict:
    """Every chosen interpreter checked before any work; returns what report.json's environment
    says of each worker's (nothing is run when both workers use the coordinator's)."""
    infos = describe_all(chosen)
    check(infos)
    return {side: _summary(infos[side]) for side in ("torch", "paddle")}


def _summary(info: dict) -> dict:
    return {k: info[k] for k in ("executable", "prefix", "python", "numpy", "harness") if k in info}
