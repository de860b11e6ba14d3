"""torch -> paddle weight mapping, framework-free, driven by the module tables both workers report.

Each worker reports its modules in definition order as {name, type, params, buffers, ids}. The
plan pairs torch modules with paddle modules (same structured name first, then module *type*
and order, with every shape verified), decides per tensor how it converts (copy, transpose,
rename, split of a fused projection) by module type, and requires every paddle tensor to be
filled exactly once. Ambiguity or a leftover is an error that names the modules, never a guess;
a Linear weight is transposed because of its module type, so a square one cannot slip through.
"""

from __future__ import annotations

import functools
import re
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from harness.errors import UsageError
from harness.protocol import Deferred


@dataclass(frozen=True)
class Entry:
    torch_name: str
    torch_shape: tuple
    paddle_name: str
    paddle_shape: tuple
    transpose: bool = False
    part: tuple | None = None  # (index, count): a slice along axis 0 of a fused tensor
    alias_of: str | None = None  # paddle tensor that is the same object as another one

    @property
    def transform(self) -> str:
        steps = []
        if self.part:
            steps.append(f"split {self.part[0] + 1}/{self.part[1]}")
        if self.transpose:
            steps.append("transpose")
        if self.alias_of:
            steps.append(f"alias of {self.alias_of}")
        return ", ".join(steps) or "copy"

    def apply(self, value) -> np.ndarray:
        value = np.asarray(value)
        if self.part:
            value = np.split(value, self.part[1], axis=0)[self.part[0]]
        return np.ascontiguousarray(value.T) if self.transpose else value


@dataclass
class Plan:
    entries: list
    dropped: list  # (torch name, why)

    def to_paddle(self, state: dict) -> dict:
        """torch state -> paddle state. Each converted tensor is made only when it is sent (a
        tensor copied as is passes on untouched, a shared-memory handle included)."""
        return {e.paddle_name: _lazy(e.apply, state[e.torch_name]) if e.part or e.transpose else state[e.torch_name]
                for e in self.entries}

    def to_torch(self, paddle_state: dict) -> dict:
        """The reverse direction: paddle tensors re-laid-out under torch names (fused parts joined)."""
        parts: dict = defaultdict(list)
        for e in self.entries:
            if not e.alias_of and e.paddle_name in paddle_state:
                parts[e.torch_name].append(e)
        return {name: _lazy(_joined, es, paddle_state) if len(es) > 1 or es[0].transpose
                else paddle_state[es[0].paddle_name] for name, es in parts.items()}

    def paddle_to_torch_names(self, arrays: dict) -> dict:
        """Paddle-side arrays (parameters, gradients) under torch names and layouts, for diffs."""
        fused = {e.torch_name for e in self.entries if e.part}
        out = self.to_torch(arrays)
        return {k: v for k, v in out.items() if k not in fused or self._complete(k, arrays)}

    def _complete(self, torch_name: str, arrays: dict) -> bool:
        return all(e.paddle_name in arrays for e in self.entries if e.torch_name == torch_name and not e.alias_of)

    def table(self) -> str:
        rows = [("torch name", "torch shape", "paddle name", "paddle shape", "transform")]
        rows += [(e.torch_name, str(list(e.torch_shape)), e.paddle_name, str(list(e.paddle_shape)), e.transform)
                 for e in self.entries]
        rows += [(name, "", "-", "", f"dropped: {why}") for name, why in self.dropped]
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows) + "\n"


def _lazy(fn, *args) -> Deferred:
    return Deferred(functools.partial(fn, *args))


def _joined(entries: list, paddle_state: dict) -> np.ndarray:
    """One torch tensor from its paddle parts, each transposed back as needed."""
    parts = []
    for e in entries:
        value = np.asarray(paddle_state[e.paddle_name])
        parts.append((e.part[0] if e.part else 0, value.T if e.transpose else value))
    parts.sort(key=lambda p: p[0])
    return np.concatenate([v for _, v in parts], axis=0) if len(parts) > 1 else np.ascontiguousarray(parts[0][1])


# ---------------------------------------------------------------------------- module kinds
_KIND_ALIASES = {
    "nondynamicallyquantizablelinear": "linear",
    "syncbatchnorm": "batchnorm",
    "simplernn": "rnn",
    "multiheadattention": "mha",
}


def kind(module_type: str) -> str:
    """torch and paddle class names to one vocabulary: Conv2d/Conv2D -> conv2d, BatchNorm2D -> batchnorm,
    ConvTranspose2d/Conv2DTranspose -> convtranspose2d."""
    t = module_type.lower()
    if t in _KIND_ALIASES:
        return _KIND_ALIASES[t]
    m = re.fullmatch(r"conv(\d)dtranspose", t)
    if m:
        return f"convtranspose{m.group(1)}d"
    if t.startswith("batchnorm") or t.startswith("instancenorm"):
        return re.sub(r"\d.*$", "", t)
    return t


RENAMES = {"batchnorm": {"running_mean": "_mean", "running_var": "_variance"}, "prelu": {"weight": "_weight"}}
DROPPED = {"batchnorm": {"num_batches_tracked": "no paddle counterpart"}}
TRANSPOSED = {"linear": {"weight"}}
FUSED_QKV = {"in_proj_weight": "weight", "in_proj_bias": "bias"}
SEPARATE_QKV = {"q_proj_weight": "q_proj.weight", "k_proj_weight": "k_proj.weight", "v_proj_weight": "v_proj.weight"}
MHA_CHILDREN = ("q_proj", "k_proj", "v_proj")


def full_name(module: str, local: str) -> str:
    """A tensor's structured name from its module's and its own."""
    return f"{module}.{local}" if module else local


def module_of(tensor_name: str) -> str:
    return tensor_name.rsplit(".", 1)[0] if "." in tensor_name else ""


def _tensors(module: dict) -> dict:
    return {**module["params"], **module["buffers"]}


class _Planner:
    def __init__(self, torch_modules: list, paddle_modules: list):
        self.entries: list = []
        self.dropped: list = []
        self.filled: dict = {}
        self.paddle_shapes: dict = {}
        self.paddle_alias: dict = {}  # alias full name -> first full name of the same tensor
        first_by_id: dict = {}
        for m in paddle_modules:
            for local, shape in _tensors(m).items():
                full = full_name(m["name"], local)
                self.paddle_shapes[full] = tuple(shape)
                ident = m.get("ids", {}).get(local)
                if ident is not None and ident in first_by_id:
                    self.paddle_alias[full] = first_by_id[ident]
                elif ident is not None:
                    first_by_id[ident] = full
        self.torch_tied: dict = {}
        seen: dict = {}
        for m in torch_modules:
            for local in _tensors(m):
                ident = m.get("ids", {}).get(local)
                if ident is not None and ident in seen:
                    self.torch_tied[full_name(m["name"], local)] = seen[ident]
                elif ident is not None:
                    seen[ident] = full_name(m["name"], local)
        self.torch_modules = [m for m in torch_modules if self._owns_tensors(m, torch=True)]
        self.paddle_modules = [m for m in paddle_modules if kind(m["type"]) == "mha" or self._owns_tensors(m, torch=False)]

    def _owns_tensors(self, m: dict, torch: bool) -> bool:
        names = [full_name(m["name"], k) for k in _tensors(m)]
        aliases = self.torch_tied if torch else self.paddle_alias
        return any(n not in aliases for n in names)

    # ------------------------------------------------------------------ matching
    def match(self) -> list:
        pairs = []
        by_name = {m["name"]: m for m in self.paddle_modules}
        used_paddle: set = set()
        rest_torch = []
        for tm in self.torch_modules:
            pm = by_name.get(tm["name"])
            if pm is not None and kind(pm["type"]) == kind(tm["type"]) and pm["name"] not in used_paddle:
                pairs.append((tm, pm))
                used_paddle.add(pm["name"])
                used_paddle.update(self._consumed_children(tm, pm))
            else:
                rest_torch.append(tm)
        rest_paddle = [m for m in self.paddle_modules if m["name"] not in used_paddle]
        groups_t, groups_p = defaultdict(list), defaultdict(list)
        for m in rest_torch:
            groups_t[kind(m["type"])].append(m)
        for m in rest_paddle:
            groups_p[kind(m["type"])].append(m)
        # MHA first: it consumes paddle's q/k/v Linear children before Linears are paired by order
        for k in sorted(set(groups_t) | set(groups_p), key=lambda k: k != "mha"):
            ts = groups_t.get(k, [])
            ps = [m for m in groups_p.get(k, []) if m["name"] not in used_paddle]
            if k == "mha" and not ts:
                continue  # paddle attention without a torch counterpart: its q/k/v Linears pair on their own
            if len(ts) != len(ps):
                raise UsageError(
                    f"weight mapping: {len(ts)} torch {k} module(s) without a same-named paddle module "
                    f"({_names(ts)}) but {len(ps)} such paddle module(s) ({_names(ps)}); give the pair a "
                    "torch_to_paddle(state) function or align the attribute names"
                )
            for tm, pm in zip(ts, ps):
                pairs.append((tm, pm))
                used_paddle.add(pm["name"])
                used_paddle.update(self._consumed_children(tm, pm))
                for g in groups_p.values():  # children consumed by an MHA leave the Linear pool
                    g[:] = [m for m in g if m["name"] not in used_paddle]
        return pairs

    @staticmethod
    def _consumed_children(tm: dict, pm: dict) -> set:
        return {full_name(pm["name"], c) for c in MHA_CHILDREN} if kind(tm["type"]) == "mha" else set()

    # ------------------------------------------------------------------ tensors
    def convert(self, tm: dict, pm: dict) -> None:
        k = kind(tm["type"])
        ptensors = {full_name(pm["name"], loc): tuple(s) for loc, s in _tensors(pm).items()}
        for local, shape in _tensors(tm).items():
            tname = full_name(tm["name"], local)
            if tname in self.torch_tied:
                self.dropped.append((tname, f"tied to {self.torch_tied[tname]}"))
                continue
            if local in DROPPED.get(k, {}):
                self.dropped.append((tname, DROPPED[k][local]))
                continue
            shape = tuple(shape)
            if k == "mha" and local in FUSED_QKV:
                for i, child in enumerate(MHA_CHILDREN):
                    self._add(tname, shape, full_name(pm["name"], f"{child}.{FUSED_QKV[local]}"),
                              transpose=len(shape) == 2, part=(i, 3))
                continue
            if k == "mha" and local in SEPARATE_QKV:
                self._add(tname, shape, full_name(pm["name"], SEPARATE_QKV[local]), transpose=True)
                continue
            pname = full_name(pm["name"], RENAMES.get(k, {}).get(local, local))
            if pname not in ptensors:
                raise UsageError(
                    f"weight mapping: torch '{tname}' has no counterpart in paddle module '{pm['name']}' "
                    f"({pm['type']}: {', '.join(sorted(_tensors(pm))) or 'no tensors'})"
                )
            self._add(tname, shape, pname, transpose=local in TRANSPOSED.get(k, set()) and len(shape) == 2)

    def _add(self, tname: str, shape: tuple, pname: str, transpose: bool = False, part: tuple | None = None) -> None:
        if pname not in self.paddle_shapes:
            raise UsageError(f"weight mapping: torch '{tname}' maps to paddle '{pname}', which the paddle model lacks")
        expect = (shape[0] // part[1], *shape[1:]) if part else shape
        if part and shape[0] % part[1]:
            raise UsageError(f"weight mapping: torch '{tname}' {list(shape)} does not split into {part[1]} parts")
        if transpose:
            expect = tuple(reversed(expect))
        got = self.paddle_shapes[pname]
        if got != expect:
            what = "transposed " if transpose else ""
            raise UsageError(
                f"weight mapping: torch '{tname}' {list(shape)} ({what}{'split ' if part else ''}expected "
                f"{list(expect)}) does not fit paddle '{pname}' {list(got)}"
            )
        if pname in self.filled:
            raise UsageError(f"weight mapping: paddle '{pname}' would be filled twice (from {self.filled[pname]} and {tname})")
        self.filled[pname] = tname
        self.entries.append(Entry(tname, shape, pname, got, transpose, part))

    def finish(self) -> Plan:
        for alias, original in self.paddle_alias.items():
            source = next((e for e in self.entries if e.paddle_name == original), None)
            if source is not None:
                self.filled[alias] = source.torch_name
                self.entries.append(Entry(source.torch_name, source.torch_shape, alias, self.paddle_shapes[alias],
                                          source.transpose, source.part, alias_of=original))
        unfilled = [n for n in self.paddle_shapes if n not in self.filled]
        if unfilled:
            raise UsageError(
                f"weight mapping: paddle tensors left unfilled: {', '.join(unfilled[:8])}"
                f"{' ...' if len(unfilled) > 8 else ''} (no torch tensor maps to them)"
            )
        return Plan(self.entries, self.dropped)


def _names(modules: list) -> str:
    shown = ", ".join(f"'{m['name']}'" for m in modules[:4])
    return (shown + (" ..." if len(modules) > 4 else "")) or "none"


def plan(torch_modules: list, paddle_modules: list) -> Plan:
    planner = _Planner(torch_modules, paddle_modules)
    for tm, pm in planner.match():
        planner.convert(tm, pm)
    return planner.finish()
