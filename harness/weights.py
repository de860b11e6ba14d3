"""torch -> paddle weight mapping, framework-free, driven by the module tables both workers report.

Each worker reports its modules as {name, type, params: {local: shape}, buffers: {...}}. The
plan pairs torch modules with paddle modules, decides per tensor how it converts (copy,
transpose, rename) by module *type*, and verifies that every paddle tensor is filled exactly
once with an equal shape. Ambiguity or a leftover is an error, never a guess.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from harness.errors import UsageError


@dataclass(frozen=True)
class Entry:
    torch_name: str
    torch_shape: tuple
    paddle_name: str
    paddle_shape: tuple
    transform: str  # copy | transpose

    def apply(self, value: np.ndarray) -> np.ndarray:
        if self.transform == "transpose":
            return np.ascontiguousarray(value.T)
        return value

    def invert(self, value: np.ndarray) -> np.ndarray:
        return self.apply(value)  # both transforms are their own inverse


@dataclass
class Plan:
    entries: list
    dropped: list  # (torch name, why)

    def to_paddle(self, state: dict) -> dict:
        return {e.paddle_name: e.apply(np.asarray(state[e.torch_name])) for e in self.entries}

    def paddle_to_torch_names(self, arrays: dict) -> dict:
        """Paddle-side arrays renamed and re-laid-out as torch's, for side-by-side diffs."""
        by_paddle = {e.paddle_name: e for e in self.entries}
        return {by_paddle[k].torch_name: by_paddle[k].invert(v) for k, v in arrays.items() if k in by_paddle}

    def table(self) -> str:
        rows = [("torch name", "torch shape", "paddle name", "paddle shape", "transform")]
        rows += [(e.torch_name, str(list(e.torch_shape)), e.paddle_name, str(list(e.paddle_shape)), e.transform) for e in self.entries]
        rows += [(name, "", "-", "", f"dropped: {why}") for name, why in self.dropped]
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows) + "\n"


def _kind(module_type: str) -> str:
    t = module_type.lower()
    if t in ("linear",):
        return "linear"
    if t.startswith("batchnorm") or t in ("syncbatchnorm",):
        return "batchnorm"
    return t


# torch local name -> paddle local name, per module kind
RENAMES = {"batchnorm": {"running_mean": "_mean", "running_var": "_variance"}}
DROPPED = {"batchnorm": {"num_batches_tracked": "no paddle counterpart"}}
TRANSPOSED = {"linear": {"weight"}}


def _tensors(module: dict) -> dict:
    return {**module["params"], **module["buffers"]}


def plan(torch_modules: list, paddle_modules: list) -> Plan:
    paddle_by_name = {m["name"]: m for m in paddle_modules}
    entries, dropped = [], []
    filled: dict[str, str] = {}
    for tm in torch_modules:
        tensors = _tensors(tm)
        if not tensors:
            continue
        pm = paddle_by_name.get(tm["name"])
        if pm is None:
            raise UsageError(
                f"weight mapping: torch module '{tm['name']}' ({tm['type']}) has no paddle module of the same name; "
                "give the pair a torch_to_paddle(state) function or align the attribute names"
            )
        kind = _kind(tm["type"])
        ptensors = _tensors(pm)
        for local, shape in tensors.items():
            tname = f"{tm['name']}.{local}" if tm["name"] else local
            if local in DROPPED.get(kind, {}):
                dropped.append((tname, DROPPED[kind][local]))
                continue
            plocal = RENAMES.get(kind, {}).get(local, local)
            if plocal not in ptensors:
                raise UsageError(f"weight mapping: torch '{tname}' has no counterpart '{plocal}' in paddle module '{pm['name']}' ({pm['type']})")
            pname = f"{pm['name']}.{plocal}" if pm["name"] else plocal
            transform = "transpose" if local in TRANSPOSED.get(kind, set()) and len(shape) == 2 else "copy"
            expect = tuple(reversed(shape)) if transform == "transpose" else tuple(shape)
            if tuple(ptensors[plocal]) != expect:
                raise UsageError(
                    f"weight mapping: torch '{tname}' {list(shape)} ({transform}) does not fit paddle '{pname}' {list(ptensors[plocal])}"
                )
            if pname in filled:
                raise UsageError(f"weight mapping: paddle '{pname}' would be filled twice (from {filled[pname]} and {tname})")
            filled[pname] = tname
            entries.append(Entry(tname, tuple(shape), pname, tuple(ptensors[plocal]), transform))
    unfilled = [
        f"{m['name']}.{k}" if m["name"] else k for m in paddle_modules for k in _tensors(m)
        if (f"{m['name']}.{k}" if m["name"] else k) not in filled
    ]
    if unfilled:
        raise UsageError(f"weight mapping: paddle tensors left unfilled: {', '.join(unfilled[:8])}{' ...' if len(unfilled) > 8 else ''}")
    return Plan(entries, dropped)
