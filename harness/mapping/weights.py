"""torch -> paddle weight mapping, framework-free, driven by the module tables both workers report.

Each worker reports its modules in definition order as {name, type, class, params, buffers, ids,
...} and the order one eval-mode forward of batch 0 calls them in. harness/mapping/pairing.py pairs
torch modules with paddle modules (a [mapping] rename, same structured name, call order, the only
candidate of its shapes; definition order only without a traced forward), only ever two that hold
the same tensors, whatever their classes are called. Here each pair's tensors are converted (copy,
transpose, rename, split of a fused projection), every paddle tensor must be filled exactly once,
and the plan records how each pair was decided and how each tensor's layout was: by its shape
where only one layout fits, by measurement where the weight is square (harness/mapping/layout.py),
by the type rule (torch's Linear is [out, in], paddle's [in, out]) only where no forward measured it.
"""

from __future__ import annotations

import dataclasses
import functools
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np

from harness.errors import UsageError
from harness.mapping import dropouts, pairing
from harness.mapping.modtable import (
    FUSED_QKV,
    MHA_CHILDREN,
    SEPARATE_QKV,
    TORCH_ONLY,
    container_signature,
    either_layout,
    full_name,
    fused_signature,
    kind,
    module_of,
    paddle_local,
    paddle_signature,
    tensors,
    torch_signature,
)
from harness.mapping.pairing import RenameError
from harness.workers.protocol import Deferred

__all__ = ["Entry", "Plan", "RenameError", "full_name", "kind", "module_of", "plan"]


@dataclass(frozen=True)
class Entry:
    torch_name: str
    torch_shape: tuple
    paddle_name: str
    paddle_shape: tuple
    transpose: bool = False
    part: tuple | None = None  # (index, count): a slice along axis 0 of a fused tensor
    alias_of: str | None = None  # paddle tensor that is the same object as another one
    decided_by: str = ""  # the pairing rule of its module (harness/mapping/pairing.py), for the reader to check
    detail: str = ""
    layout: str = ""  # how transpose-or-not was decided: shape, measured, type rule (LAYOUT_*), with why

    @property
    def square(self) -> bool:
        """A 2-D tensor that fits paddle's either way: only its values can tell (harness/mapping/layout.py)."""
        shape = self.paddle_shape
        return len(shape) == 2 and shape[0] == shape[1] > 1

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
    dropouts: list = field(default_factory=list)  # dropouts.DropoutPair
    unpaired_dropouts: list = field(default_factory=list)  # {side, name, p, why}
    notes: list = field(default_factory=list)
    modules: list = field(default_factory=list)  # pairing.Pair: which module is which
    calls: dict = field(default_factory=dict)  # side -> the traced forward's module calls, or None

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

    def torch_names(self) -> dict:
        """Each paddle tensor's torch name (a part of a fused tensor: the fused tensor's)."""
        return {e.paddle_name: e.torch_name for e in self.entries}

    def paddle_to_torch_names(self, arrays: dict) -> dict:
        """Paddle-side arrays (parameters, gradients) under torch names and layouts, for diffs."""
        fused = {e.torch_name for e in self.entries if e.part}
        out = self.to_torch(arrays)
        return {k: v for k, v in out.items() if k not in fused or self._complete(k, arrays)}

    def _complete(self, torch_name: str, arrays: dict) -> bool:
        return all(e.paddle_name in arrays for e in self.entries if e.torch_name == torch_name and not e.alias_of)

    def table(self) -> str:
        rows = [("torch name", "torch shape", "paddle name", "paddle shape", "transform", "decided by", "layout by")]
        rows += [(e.torch_name, str(list(e.torch_shape)), e.paddle_name, str(list(e.paddle_shape)), e.transform,
                  e.decided_by + (f" ({e.detail})" if e.detail else ""), e.layout or "-") for e in self.entries]
        rows += [(name, "", "-", "", f"dropped: {why}", "", "") for name, why in self.dropped]
        text = _columns(rows)
        counts = Counter(e.decided_by for e in self.entries if not e.alias_of)
        text += "\ndecided by, per tensor: " + ", ".join(f"{k} {n}" for k, n in counts.most_common()) + "\n"
        layouts = Counter(e.layout.split(" (")[0] for e in self.entries if e.layout and not e.alias_of)
        if layouts:
            text += "layout of 2-D tensors by: " + ", ".join(f"{k} {n}" for k, n in layouts.most_common()) + "\n"
        if self.dropouts or self.unpaired_dropouts:
            text += "\ndropout sites (torch -> paddle: probability, mode; paired by the weight pair called before them)\n"
            drows = [(d.torch, _site(d.torch_site), d.paddle, _site(d.paddle_site), f"after '{d.after}'" if d.after else "first")
                     for d in self.dropouts]
            drows += [(u["name"] if u["side"] == "torch" else "-", "", u["name"] if u["side"] == "paddle" else "-", "",
                       f"unpaired: {u['why']}") for u in self.unpaired_dropouts]
            text += _columns(drows)
        return text + "".join(f"\nnote: {n}" for n in self.notes) + ("\n" if self.notes else "")

    def to_json(self) -> dict:
        """report.json's weight_map: every tensor pair and how it was decided, and the dropout sites."""
        return {"pairs": [{"torch": e.torch_name, "paddle": e.paddle_name, "transform": e.transform,
                           "decided_by": e.decided_by, "detail": e.detail, "layout": e.layout} for e in self.entries],
                "dropped": [{"torch": name, "why": why} for name, why in self.dropped],
                "dropout": [d.to_json() for d in self.dropouts], "dropout_unpaired": self.unpaired_dropouts,
                "notes": self.notes}


def _columns(rows: list) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
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


def _site(site: dict) -> str:
    return f"p={site['p']:g} {site['mode']}" + (" (functional)" if site["functional"] else "")


LAYOUT_SHAPE, LAYOUT_MEASURED, LAYOUT_RULE = "shape", "measured", "type rule"


def type_rule(torch_module: dict, paddle_module: dict, local: str) -> bool:
    """Whether a square weight is transposed when no forward measured it: torch's Linear weight is
    [out, in], paddle's [in, out], except PaConvert's paddle.compat.nn.Linear, which keeps torch's."""
    return (local == "weight" and kind(torch_module["type"]) == "linear"
            and not paddle_module.get("class", "").startswith("paddle.compat."))


def layout_of(torch_shape: tuple, paddle_shape: tuple, rule: bool) -> tuple:
    """(transpose, how decided) for one tensor: by shape unless it is square."""
    if len(torch_shape) != 2 or torch_shape[0] == torch_shape[1] == 1:
        return False, ""
    if torch_shape[0] != torch_shape[1]:
        return tuple(paddle_shape) != tuple(torch_shape), LAYOUT_SHAPE
    return rule, f"{LAYOUT_RULE} (not measured)"


class _Planner:
    def __init__(self, torch_modules: list, paddle_modules: list):
        self.entries: list = []
        self.dropped: list = []
        self.filled: dict = {}
        self.paddle_shapes: dict = {}
        self.paddle_alias = _aliases(paddle_modules)  # alias full name -> first full name of the same tensor
        self.torch_tied = _aliases(torch_modules)
        for m in paddle_modules:
            for local, shape in tensors(m).items():
                self.paddle_shapes[full_name(m["name"], local)] = tuple(shape)
        by_name = {m["name"]: m for m in paddle_modules}
        self.torch_modules = [m for m in torch_modules if self._owns_tensors(m, torch=True)]
        self.fused = {("torch", m["name"]): fused_signature(m) for m in self.torch_modules}
        self.fused.update({("paddle", m["name"]): container_signature(m, by_name) for m in paddle_modules})
        self.paddle_modules = [m for m in paddle_modules
                               if self.fused["paddle", m["name"]] is not None or self._owns_tensors(m, torch=False)]
        self.signatures = {**{("torch", m["name"]): torch_signature(m) for m in self.torch_modules},
                           **{("paddle", m["name"]): paddle_signature(m) for m in self.paddle_modules}}

    def _owns_tensors(self, m: dict, torch: bool) -> bool:
        names = [full_name(m["name"], k) for k in tensors(m)]
        aliases = self.torch_tied if torch else self.paddle_alias
        return any(n not in aliases for n in names)

    # ------------------------------------------------------------------ tensors
    def convert(self, tm: dict, pm: dict, pair: pairing.Pair) -> None:
        how = {"decided_by": pair.decided_by, "detail": pair.detail}
        for local, shape in tensors(tm).items():
            tname = full_name(tm["name"], local)
            if tname in self.torch_tied:
                self.dropped.append((tname, f"tied to {self.torch_tied[tname]}"))
                continue
            shape = tuple(shape)
            if pair.fused and local in FUSED_QKV:  # paddle's q/k/v Linears are [in, out]
                for i, child in enumerate(MHA_CHILDREN):
                    self._add(tname, shape, full_name(pm["name"], f"{child}.{FUSED_QKV[local]}"),
                              rule=len(shape) == 2, part=(i, 3), how=how)
            elif pair.fused and local in SEPARATE_QKV:
                self._add(tname, shape, full_name(pm["name"], SEPARATE_QKV[local]), rule=True, how=how)
            elif (plocal := paddle_local(local, pm)) is None and local in TORCH_ONLY:
                self.dropped.append((tname, TORCH_ONLY[local]))
            else:
                self._add(tname, shape, full_name(pm["name"], plocal or local), rule=type_rule(tm, pm, local), how=how)

    def _add(self, tname: str, shape: tuple, pname: str, *, rule: bool, part: tuple | None = None, how: dict) -> None:
        """One tensor of a pair whose signatures agree (harness/mapping/pairing.py): these checks only
        guard the conversion rules against drifting from modtable's signatures."""
        expect = (shape[0] // part[1], *shape[1:]) if part else shape
        got = self.paddle_shapes.get(pname)
        if got is None or either_layout(got) != either_layout(expect):
            raise UsageError(f"weight mapping: torch '{tname}' {list(shape)} does not fit paddle '{pname}' "
                             f"{list(got) if got else '(absent)'}; " + pairing.remedy())
        transpose, layout = layout_of(expect, got, rule)
        root = self.paddle_alias.get(pname, pname)  # one paddle tensor under several names is filled once
        if root in self.filled:
            raise UsageError(f"weight mapping: paddle '{pname}' would be filled twice (from "
                             f"{self.filled[root].torch_name} and {tname}); " + pairing.remedy())
        self.filled[root] = Entry(tname, shape, pname, got, transpose, part, layout=layout, **how)
        self.entries.append(self.filled[root])

    def finish(self) -> Plan:
        unfilled = []
        for name, shape in self.paddle_shapes.items():
            source = self.filled.get(self.paddle_alias.get(name, name))
            if source is None:
                unfilled.append(name)
            elif source.paddle_name != name:  # another name of the tensor that was filled
                self.entries.append(dataclasses.replace(source, paddle_name=name, paddle_shape=shape,
                                                        alias_of=source.paddle_name))
        if unfilled:
            raise UsageError(
                f"weight mapping: paddle tensors left unfilled: {', '.join(unfilled[:8])}"
                f"{' ...' if len(unfilled) > 8 else ''} (the paddle model has them, no torch tensor maps to them); "
                + pairing.remedy())
        return Plan(self.entries, self.dropped)


def _aliases(modules: list) -> dict:
    """Full name -> the first full name of the same tensor object (tied weights, paddle's RNN cells)."""
    first_by_id: dict = {}
    out: dict = {}
    for m in modules:
        for local in tensors(m):
            ident = m.get("ids", {}).get(local)
            full = full_name(m["name"], local)
            if ident is not None and ident in first_by_id:
                out[full] = first_by_id[ident]
            elif ident is not None:
                first_by_id[ident] = full
    return out


def plan(torch_modules: list, paddle_modules: list, *, traces: dict | None = None, renames: dict | None = None) -> Plan:
    """traces: per side what the worker's call_order op returned ({calls, error}); without one
    for a side, modules no name pairs go by definition order and the plan notes it."""
    traces = traces or {}
    calls = {side: (traces.get(side) or {}).get("calls") for side in ("torch", "paddle")}
    planner = _Planner(torch_modules, paddle_modules)
    pairer = pairing.Pairer(torch_rows=planner.torch_modules, paddle_rows=planner.paddle_modules,
                            signatures=planner.signatures, fused=planner.fused, traces={s: pairing.Trace.of(c) for s, c in calls.items()},
                            renames=renames or {}, all_names={"torch": {m["name"] for m in torch_modules},
                                                              "paddle": {m["name"] for m in paddle_modules}})
    rows = {("torch", m["name"]): m for m in torch_modules} | {("paddle", m["name"]): m for m in paddle_modules}
    pairs = pairer.pair()
    for p in pairs:
        planner.convert(rows["torch", p.torch], rows["paddle", p.paddle], p)
    result = planner.finish()
    result.dropouts, result.unpaired_dropouts = dropouts.pair(
        torch_modules=torch_modules, paddle_modules=paddle_modules, calls=calls,
        module_pairs=[(p.torch, p.paddle) for p in pairs])
    result.notes = _notes(traces, calls, pairs) + pairing.order_notes(pairs, pairer.traces, planner.signatures)
    result.modules, result.calls = pairs, calls
    return result


def _notes(traces: dict, calls: dict, pairs: list) -> list:
    notes = []
    for side, c in calls.items():
        if c is None:
            error = (traces.get(side) or {}).get("error")
            notes.append(f"no traced {side} forward{f' ({error})' if error else ''}: modules that no name pairs were "
                         "paired by definition order")
    return notes
