"""The rules of the house, checked: the coordinator never loads a framework nor runs backends
code; harness/ is a set of rooms, each saying in its docstring what it holds and which rooms it
may import, and imports go only that way (no cycle, between rooms or modules); backends/ use only
harness's framework-free leaves; each worker loads exactly one framework; a backend missing a
primitive fails at start-up."""

import ast
import functools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from harness.pair import loader, stubs
from harness.workers import protocol

ROOT = Path(__file__).resolve().parents[1]
FRAMEWORK_MODULES = ("torch", "paddle", "reprod_log")
# what backends/ may import from harness/: framework-free leaves with no dependency on a run
BACKEND_MAY_IMPORT = {"harness.workers.protocol", "harness.pair.loader", "harness.pair.stubs",
                      "harness.config.optim_table", "harness.safety.safeload", "harness.safety.bounded",
                      "harness.pair.making"}
# the modules at the top of harness/: the run itself (they may import any room) and its errors
TOP_LEVEL = {"harness", "harness.__main__", "harness.api", "harness.cli", "harness.coordinator",
             "harness.errors", "harness.pytest_plugin", "harness.session"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, known: set) -> set:
    """Every module this file imports (at any depth of the file, function bodies included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:  # `from harness.verdict import keys` imports harness.verdict.keys
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in known else node.module)
    return found


@functools.cache
def _graph(package: str) -> dict:
    files = {_module_name(p): p for p in (ROOT / package).rglob("*.py")}
    known = set(files) | {_module_name(p) for p in (ROOT / "harness").rglob("*.py")}
    return {name: _imports(path, known) for name, path in files.items()}


def _cycle(graph: dict) -> list | None:
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph:
                continue
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_cycle_inside_harness():
    assert _cycle(_graph("harness")) is None, " -> ".join(_cycle(_graph("harness")))


def _room_of(module: str) -> str:
    """harness.verdict.diff -> harness.verdict; a top-level module is a room of its own."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


@functools.cache
def _rooms() -> dict:
    """Room -> (its docstring, the rooms and modules it declares it may import)."""
    rooms = {}
    for init in sorted((ROOT / "harness").glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        declared = doc.split("May import:", 1)[1] if "May import:" in doc else None
        allowed = set() if declared is None else {w.strip(" ,.\n") for w in declared.replace(",", " ").split()
                                                   if w.startswith("harness")}
        rooms[_module_name(init)] = (doc, allowed if declared is not None else None)
    return rooms


def test_harness_is_a_few_rooms_and_the_run_at_the_top():
    names = {p.name for p in (ROOT / "harness").iterdir() if p.name != "__pycache__"}
    rooms = {n for n in names if (ROOT / "harness" / n / "__init__.py").is_file()}
    modules = {f"harness.{n[:-3]}" for n in names if n.endswith(".py") and n != "__init__.py"}
    assert modules | {"harness"} == TOP_LEVEL, "a module at the top of harness/ belongs in a room"
    assert len(rooms) <= 10 and not names - rooms - {f"{m.split('.')[-1]}.py" for m in modules} - {"__init__.py"}


def test_each_room_says_what_it_holds_and_what_it_may_import():
    for room, (doc, allowed) in _rooms().items():
        assert allowed is not None, f"{room}/__init__.py: its docstring must end with 'May import: ...'"
        folder = ROOT / room.replace(".", "/")
        unnamed = [p.name for p in folder.glob("*.py") if p.name != "__init__.py" and p.name not in doc]
        assert not unnamed, f"{room}/__init__.py does not say what {unnamed} hold"
        unknown = {a for a in allowed if _room_of(a) not in _rooms() and a not in TOP_LEVEL}
        assert not unknown, f"{room} may import {sorted(unknown)}, which is no room"


def test_rooms_import_only_what_they_declare():
    rooms = _rooms()
    for module, imported in _graph("harness").items():
        room = _room_of(module)
        if room not in rooms:
            continue  # the run at the top may import any room
        allowed = rooms[room][1] | {room}
        bad = {m for m in imported if m.startswith("harness.") or m == "harness"} - {
            m for m in imported if _room_of(m) in allowed or m in allowed}
        assert not bad, f"{module} imports {sorted(bad)}; {room} may import only {sorted(allowed - {room})}"


def test_the_rooms_import_in_one_direction():
    declared = {room: {_room_of(a) for a in allowed} - {room} for room, (_, allowed) in _rooms().items()}
    assert _cycle(declared) is None, " -> ".join(_cycle(declared))


def test_the_leaves_backends_import_stay_framework_free_leaves():
    graph = _graph("harness")
    for leaf in BACKEND_MAY_IMPORT:
        reach = {m for m in graph[leaf] if m.startswith("harness.")}
        assert reach <= BACKEND_MAY_IMPORT | {"harness.errors"} | set(_rooms()), f"{leaf} imports {sorted(reach)}"


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_harness_never_imports_backends_or_a_framework():
    for module, imported in _graph("harness").items():
        bad = {m for m in imported if m.split(".")[0] in ("backends", *FRAMEWORK_MODULES)}
        assert not bad, f"{module} imports {sorted(bad)}"


def test_backends_use_only_harness_leaves():
    for module, imported in _graph("backends").items():
        bad = {m for m in imported if m.split(".")[0] == "harness" and m not in BACKEND_MAY_IMPORT}
        assert not bad, f"{module} imports {sorted(bad)}: only {sorted(BACKEND_MAY_IMPORT)} are framework-free leaves"


def test_coordinator_imports_no_framework_and_no_backends_code():
    code = (
        "import sys, json\n"
        "import harness.cli, harness.coordinator, harness.verdict.diff, harness.report.runreport\n"
        "import harness.config.schema, harness.mapping.weights\n"
        "from harness.pair.batches import BatchSource\n"
        "from harness.config.parse import load_zoo\n"
        "cfg = load_zoo('tiny_transformer'); BatchSource(cfg).batch(0)\n"  # the pair loads in the data worker
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in %r)))"
        % (FRAMEWORK_MODULES + ("backends",),)
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    # the zoo pair's own `from backends.zoo...` lines are pair code, loaded as data by the pair loader
    assert [m for m in loaded if not m.startswith("backends.zoo")] == []


@pytest.mark.e2e
def test_a_whole_run_leaves_no_framework_in_the_coordinator(tmp_path):
    """Not just its own imports: nothing a worker sends may make the coordinator import a
    framework to unpickle it (torch.__version__ is a str subclass from torch)."""
    code = (
        "import sys, json, runpy\n"
        f"sys.argv = ['reprod-harness', 'demo', '--out', {str(tmp_path / 'out')!r}]\n"
        "try:\n    runpy.run_module('harness', run_name='__main__')\n"
        "except SystemExit as exc:\n    code = exc.code\n"
        "print(json.dumps([code, sorted(m for m in sys.modules if m.split('.')[0] in %r)]))"
        % (FRAMEWORK_MODULES,)
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    code, loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert code == 0, out.stderr[-2000:]
    assert loaded == []


def test_a_subclass_of_a_builtin_never_crosses_to_the_coordinator():
    from collections import OrderedDict

    from backends.worker import check_crossable

    class Version(str):
        pass

    check_crossable({"version": "2.1", "sizes": [1, (2, 3)], "ok": True}, "reply")
    with pytest.raises(TypeError, match=r"reply\['version'\] is a .*Version \(a subclass of str\), which cannot cross"):
        check_crossable({"version": Version("2.1")}, "reply")
    with pytest.raises(TypeError, match=r"reply is a collections.OrderedDict \(a subclass of dict\)"):
        check_crossable(OrderedDict(a=1), "reply")


def test_a_backend_missing_a_primitive_fails_at_start_up_naming_it():
    from backends.base import Runner
    from backends.primitives import Primitives

    abstract = sorted(Primitives.__abstractmethods__)
    assert len(abstract) > 20
    incomplete = type("Incomplete", (Runner,), {name: (lambda self, *a, **k: None) for name in abstract[1:]})
    with pytest.raises(TypeError, match=abstract[0]):
        incomplete({})
    complete = type("Complete", (Runner,), {name: (lambda self, *a, **k: None) for name in abstract})
    runner = complete({})
    assert runner.handle(protocol.Op.PING, {"payload": np.arange(3)}) == {"shape": [3], "sum": 3.0}
    with pytest.raises(RuntimeError, match="'forward' before 'setup'"):
        runner.handle(protocol.Op.FORWARD, {"batch": {}})


def test_stubbed_framework_fails_loudly_when_used(tmp_path):
    (tmp_path / "pair.py").write_text("import torch\nimport torch.nn.functional as F\nfrom torch import nn\n"
                                      "class Net(torch.nn.Module):\n    pass\n")  # a class over a stand-in is harmless
    with stubs.absent(("torch",), "test process"):
        module = loader.load(tmp_path / "pair.py", keep="paddle", where="test process")
        value = module.torch.zeros(3)
        assert stubs.is_absent(value) and stubs.is_absent(module.F.relu) and stubs.is_absent(module.nn.Linear)
        with pytest.raises(stubs.MissingFrameworkError, match="torch.zeros"):
            value + 1
        with pytest.raises(stubs.MissingFrameworkError):
            float(value)
    assert not any(stubs.is_absent(m) for m in sys.modules.values())


# A process that hides torch, as a paddle worker does, then loads a pair and libraries beside it.
HIDDEN = """
import importlib, importlib.util, json, sys
from pathlib import Path
from harness.pair import loader, stubs
stubs.block(("torch",), "paddle worker")
pair = loader.load(Path(sys.argv[1]), keep="paddle", where="paddle worker")
import scipy.stats  # its array-API helpers look torch up in sys.modules
try:
    importlib.import_module("torch")
    imported = True
except ModuleNotFoundError:
    imported = False
print(json.dumps({"found": importlib.util.find_spec("torch") is not None, "imported": imported,
                  "modules": sorted(m for m in sys.modules if m.split(".")[0] == "torch"),
                  "stand_ins": [n for n in ("torch", "models_torch") if stubs.is_absent(getattr(pair, n, None))],
                  "sibling_net": pair.TorchNet.__mro__[-1].__name__, "sibling_torch": repr(pair.sibling_torch),
                  "scipy": float(scipy.stats.norm.cdf(0.0))}))
"""


@pytest.mark.e2e  # starts a process (the data worker, or the CLI)
def test_a_hidden_framework_is_not_installed_for_libraries_and_a_stand_in_for_the_pair(tmp_path):
    """Libraries probe for torch (find_spec, sys.modules, try: import): in a process that hides it
    they find it not installed, never a stand-in; the pair and its sibling files get stand-ins."""
    (tmp_path / "models_torch.py").write_text("import torch\nclass TorchNet(torch.nn.Module):\n    pass\n")
    (tmp_path / "pair.py").write_text("import numpy, scipy.stats, torch\nfrom models_torch import TorchNet\n"
                                      "import models_torch\nsibling_torch = models_torch.torch\n")
    out = subprocess.run([sys.executable, "-c", HIDDEN, str(tmp_path / "pair.py")], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["found"] is False and seen["imported"] is False and seen["modules"] == []
    assert seen["stand_ins"] == ["torch"] and seen["sibling_net"] == "object"
    assert seen["sibling_torch"] == "<torch: not loaded in the paddle worker>"
    assert seen["scipy"] == 0.5


@pytest.mark.parametrize("as_text", [False, True], ids=["path", "str"])
def test_large_arrays_travel_through_shared_memory(tmp_path, as_text):
    """Workers receive their shared-memory folder as a string: both forms must work. The
    coordinator keeps handles (memory-mapped on use) and owns their files: each goes with its
    last handle; a worker reads them."""
    big = np.arange(protocol.SHM_MIN_BYTES // 4 + 10, dtype=np.float32)
    small = np.arange(10, dtype=np.int64)
    packed = protocol.pack({"a": big, "b": [small]}, str(tmp_path) if as_text else tmp_path)
    assert isinstance(packed["a"], protocol.SharedArray)
    assert isinstance(packed["b"][0], np.ndarray)  # small arrays go through the pipe
    assert len(list(tmp_path.iterdir())) == 1
    read = protocol.unpack(packed, keep_handles=False)  # as a worker reads a request
    np.testing.assert_array_equal(read["a"], big)
    kept = protocol.unpack(packed, keep_handles=True)  # as the coordinator keeps a reply
    np.testing.assert_array_equal(np.asarray(kept["a"]), big)
    assert protocol.pack(kept, tmp_path)["a"] is kept["a"]  # passed on without a copy
    assert len(list(tmp_path.iterdir())) == 1
    del packed, kept
    assert list(tmp_path.iterdir()) == []  # gone with its last handle
    np.testing.assert_array_equal(read["a"], big)  # a reader's map outlives the file


def test_deferred_arrays_are_made_one_at_a_time(tmp_path):
    made = []

    def make(i):
        made.append(i)
        return np.full(protocol.SHM_MIN_BYTES // 4, i, np.float32)

    packed = protocol.pack({f"t{i}": protocol.Deferred(lambda i=i: make(i)) for i in range(3)}, tmp_path)
    assert made == [0, 1, 2] and all(isinstance(v, protocol.SharedArray) for v in packed.values())
    assert float(np.asarray(packed["t2"]).max()) == 2.0


def test_no_class_over_200_lines_and_no_function_over_50():
    """Sizes a reader can hold in mind; a longer one is several things that want names."""
    long = []
    for path in sorted([*(ROOT / "harness").rglob("*.py"), *(ROOT / "backends").rglob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text())):
            size = node.end_lineno - node.lineno + 1 if hasattr(node, "end_lineno") else 0
            limit = 200 if isinstance(node, ast.ClassDef) else 50 if isinstance(
                node, (ast.FunctionDef, ast.AsyncFunctionDef)) else None
            if limit and size > limit:
                long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({size} lines)")
    assert not long, "over the limit: " + "; ".join(long)
