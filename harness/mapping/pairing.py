"""Which torch module is which paddle module, for the weight plan (harness/mapping/weights.py).

Only modules of the same signature (harness/mapping/modtable.py: every tensor's name and shape, a
2-D one in either layout) can pair, whatever their classes are called. Among those, each rule
decides what the previous ones left:

  user              a [mapping] prefix rename in the TOML made the structured names agree
  same name         the structured names agree
  call order        the k-th such module each forward calls first (one traced eval-mode forward
                    of batch 0 per side), called as often on both sides
  type order        the only such module left on each side (e.g. never called): the only one of
                    its signature, whatever its type
  definition order  the k-th in definition order: only where a side has no traced forward

A port that moves or renames a block still pairs by call order. What no rule decides (two
never-called candidates, a different number of modules or calls) is a UsageError naming the
candidates of both sides and how to settle it: a wrong pairing would load wrong weights and
send the user after a difference that is not there.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from harness.errors import UsageError
from harness.mapping.modtable import MHA_CHILDREN, describe, difference, full_name, tensors

USER, NAME, CALL, TYPE, DEFINITION = "user", "same name", "call order", "type order", "definition order"
REMEDY = ("settle it with a [mapping] table in the pair's TOML (torch module prefix = paddle module prefix{example}) "
          "or a torch_to_paddle(state) in the pair module")

FIX = "where a tensor differs the port differs (fix it there); where only the pairing is wrong, "


@dataclass(frozen=True)
class Pair:
    torch: str
    paddle: str
    decided_by: str
    detail: str = ""
    fused: bool = False  # torch's fused attention with paddle's q/k/v children (modtable.fused_signature)


@dataclass(frozen=True)
class Trace:
    """One side's traced forward: each module's first call and number of calls."""

    first: dict
    count: dict

    @classmethod
    def of(cls, calls: list | None):
        if calls is None:
            return None
        first: dict = {}
        count: dict = {}
        for i, name in enumerate(calls):
            first.setdefault(name, i)
            count[name] = count.get(name, 0) + 1
        return cls(first, count)

    def calls(self, name: str) -> int:
        return self.count.get(name, 0)


class RenameError(UsageError):
    """A [mapping] entry that names no module: the session points at its TOML line."""

    def __init__(self, key: str, reason: str):
        super().__init__(f'weight mapping: [mapping] "{key}": {reason}')
        self.key, self.reason = key, reason


def remedy(torch_name: str = "", paddle_name: str = "") -> str:
    example = f', e.g. "{torch_name}" = "{paddle_name}"' if torch_name and paddle_name else ""
    return REMEDY.format(example=example)


def suggest(word: str, names) -> str:
    close = difflib.get_close_matches(word, [n for n in names if n], n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


def order_notes(pairs: list, traces: dict, signatures: dict) -> list:
    """Same-shape pairs decided by name (or [mapping]) that the two forwards call in different
    orders: either the port computes in another order, or it swapped the names. Not an error (a
    real port bug must still reach the checks), but the reader should look."""
    tt, tp = traces.get("torch"), traces.get("paddle")
    if tt is None or tp is None:
        return []
    groups: dict = {}
    for p in pairs:
        if tt.calls(p.torch) and tp.calls(p.paddle):
            groups.setdefault((p.fused, signatures["torch", p.torch]), []).append(p)
    notes = []
    for group in groups.values():
        by_torch = sorted(group, key=lambda p: tt.first[p.torch])
        if [p.paddle for p in by_torch] != [p.paddle for p in sorted(group, key=lambda p: tp.first[p.paddle])]:
            notes.append(f"paired by {by_torch[0].decided_by} but called in another order: torch calls "
                         f"{', '.join(p.torch for p in by_torch)}, paddle calls their counterparts "
                         f"{', '.join(p.paddle for p in sorted(group, key=lambda p: tp.first[p.paddle]))}; "
                         "if the port renamed them, say which is which in [mapping]")
    return notes


class Pairer:
    def __init__(self, *, torch_rows: list, paddle_rows: list, signatures: dict, fused: dict, traces: dict,
                 renames: dict, all_names: dict):
        self.left_t = {m["name"]: m for m in torch_rows}
        self.left_p = {m["name"]: m for m in paddle_rows}
        self.sig = signatures  # (side, module name) -> signature
        self.fused = fused  # (side, module name) -> a fused attention's signature, or a q/k/v container's
        self.traces = traces  # side -> Trace | None
        self.renames = dict(renames or {})
        self.all_names = all_names  # side -> every module name (containers too)
        self.renamed: set = set()
        self.pairs: list = []

    def pair(self) -> list:
        self._check_renames()
        for tm in list(self.left_t.values()):
            self._by_rename(tm)
        for tm in list(self.left_t.values()):
            if tm["name"] in self.left_t and tm["name"] not in self.renamed:
                pm = self.left_p.get(tm["name"])
                if pm is not None and self._fits(tm, pm):
                    self._take(tm, pm, NAME)
        # attention first: a torch fused attention takes paddle's q/k/v Linears out of the Linear pool
        for attention in (True, False):
            for ts, ps in self._groups(attention):
                self._by_order(ts, ps)
        self._leftovers()
        return self.pairs

    # ------------------------------------------------------------------ the rules
    def _check_renames(self) -> None:
        for key, value in self.renames.items():
            if key not in self.all_names["torch"]:
                raise RenameError(key, f"the torch model has no module '{key}'{suggest(key, self.all_names['torch'])}")
            if value not in self.all_names["paddle"]:
                raise RenameError(key, f"the paddle model has no module '{value}'"
                                       f"{suggest(value, self.all_names['paddle'])}")

    def _rename_key(self, name: str) -> str | None:
        keys = [k for k in self.renames if name == k or name.startswith(k + ".")]
        return max(keys, key=len) if keys else None

    def _by_rename(self, tm: dict) -> None:
        key = self._rename_key(tm["name"])
        if key is None or tm["name"] not in self.left_t:  # or taken along with its attention
            return
        self.renamed.add(tm["name"])
        target = self.renames[key] + tm["name"][len(key):]
        pm = self.left_p.get(target)
        if pm is not None and self._fits(tm, pm):
            self._take(tm, pm, USER, f'[mapping] "{key}" = "{self.renames[key]}"')
        elif tm["name"] == key:  # the named module itself must fit; its children may pair by the other rules
            why = (f"does not fit paddle {describe(pm)}: {self._difference(tm['name'], target)}"
                   if pm is not None else f"has no paddle counterpart '{target}' holding tensors that are still unpaired")
            raise UsageError(f"weight mapping: [mapping] \"{key}\" = \"{self.renames[key]}\": torch {describe(tm)} {why}; "
                             "map it to a paddle module of the same type and shapes")

    def _by_order(self, ts: list, ps: list) -> None:
        tt, tp = self.traces.get("torch"), self.traces.get("paddle")
        if len(ts) == len(ps) == 1:
            self._take(ts[0], ps[0], TYPE, self._calls_note(ts[0], ps[0]))
            return
        if tt is None or tp is None:  # no call order to go by: the old rule, and the table says so
            if len(ts) == len(ps):
                for i, (tm, pm) in enumerate(zip(ts, ps)):
                    self._take(tm, pm, DEFINITION, f"#{i + 1} of {len(ts)}; no traced forward")
            return
        tc = sorted((m for m in ts if tt.calls(m["name"])), key=lambda m: tt.first[m["name"]])
        pc = sorted((m for m in ps if tp.calls(m["name"])), key=lambda m: tp.first[m["name"]])
        if len(tc) != len(pc) or any(tt.calls(a["name"]) != tp.calls(b["name"]) for a, b in zip(tc, pc)):
            self._ambiguous(ts, ps, "their forwards call them a different number of times, so the call order does "
                                    "not say which is which")
        for i, (tm, pm) in enumerate(zip(tc, pc)):
            self._take(tm, pm, CALL, f"#{i + 1} of {len(tc)} of these shapes")
        tu = [m for m in ts if not tt.calls(m["name"])]
        pu = [m for m in ps if not tp.calls(m["name"])]
        if len(tu) == len(pu) == 1:
            self._take(tu[0], pu[0], TYPE, "never called")
        elif tu and pu:
            self._ambiguous(tu, pu, "neither forward calls them, so there is no call order to go by")

    def _calls_note(self, tm: dict, pm: dict) -> str:
        note = "the only one of its shapes"
        tt, tp = self.traces.get("torch"), self.traces.get("paddle")
        if tt is None or tp is None:
            return note
        a, b = tt.calls(tm["name"]), tp.calls(pm["name"])
        return note + ("; never called" if a == b == 0 else "" if a == b else f"; called {a}x by torch, {b}x by paddle")

    # ------------------------------------------------------------------ bookkeeping
    def _fits(self, tm: dict, pm: dict) -> bool:
        """Same tensors, as they are or seen as one attention; never by class name."""
        t, p = ("torch", tm["name"]), ("paddle", pm["name"])
        return bool(tensors(pm)) and self.sig[t] == self.sig[p] or self.fused.get(t) is not None and \
            self.fused.get(t) == self.fused.get(p)

    def _difference(self, torch_name: str, paddle_name: str) -> str:
        t, p = ("torch", torch_name), ("paddle", paddle_name)
        if self.fused.get(p) is not None and self.fused.get(t) is not None:
            return difference(self.fused[t], self.fused[p])
        return difference(self.sig[t], self.sig[p])

    def _take(self, tm: dict, pm: dict, how: str, detail: str = "") -> None:
        as_attention = not tensors(pm)  # _fits: a container of q/k/v children
        self.pairs.append(Pair(tm["name"], pm["name"], how, detail, fused=as_attention))
        del self.left_t[tm["name"]]
        del self.left_p[pm["name"]]
        if not as_attention:
            return
        for child in MHA_CHILDREN:  # filled from the fused tensor, part of this pair
            self.left_p.pop(full_name(pm["name"], child), None)
        # torch's attention computes out_proj functionally (never called): it belongs to this pair
        t_out, p_out = self.left_t.get(full_name(tm["name"], "out_proj")), self.left_p.get(full_name(pm["name"], "out_proj"))
        if t_out is not None and p_out is not None and self._fits(t_out, p_out):
            self._take(t_out, p_out, how, f"with its attention '{tm['name']}'")

    def _groups(self, attention: bool) -> list:
        """(torch rows, paddle rows) of one signature each, in definition order: fused attentions
        with q/k/v containers, or modules by the tensors they hold."""
        groups: dict = {}
        for side, left in (("torch", self.left_t), ("paddle", self.left_p)):
            for m in left.values():
                key = self.fused.get((side, m["name"])) if attention else \
                    (self.sig[side, m["name"]] if side == "torch" or tensors(m) else None)
                if key is not None:
                    groups.setdefault(key, ([], []))[side == "paddle"].append(m)
        return [(ts, ps) for ts, ps in groups.values() if ts and ps]

    # ------------------------------------------------------------------ errors
    def _listing(self, side: str, rows: list) -> str:
        trace = self.traces.get(side)

        def calls(m):
            n = trace.calls(m["name"]) if trace else None
            return "" if n is None else " (never called)" if n == 0 else f" ({n} call{'s' if n > 1 else ''})"

        return ", ".join(f"'{m['name']}'{calls(m)}" for m in rows[:6]) + (" ..." if len(rows) > 6 else "")

    def _ambiguous(self, ts: list, ps: list, why: str) -> None:
        shapes = describe(ts[0]).split("(", 1)[1].rstrip(")")
        raise UsageError(
            f"weight mapping: cannot tell which paddle module is which torch one among torch {self._listing('torch', ts)} "
            f"and paddle {self._listing('paddle', ps)}, all {shapes}: {why}; "
            + remedy(ts[0]["name"], ps[0]["name"]))

    def _leftovers(self) -> None:
        left_p = {n: m for n, m in self.left_p.items() if tensors(m)}  # a q/k/v container holds no tensor itself
        for side, left, pool in (("torch", self.left_t, self.left_p), ("paddle", left_p, self.left_t)):
            lacking = _lacking(self.sig, side, next(iter(left.values())), pool) if left else None
            if lacking:
                raise UsageError(lacking)
        if self.left_t:
            tm = next(iter(self.left_t.values()))
            raise UsageError(f"weight mapping: torch {describe(tm)}{self._called('torch', tm)} has no paddle counterpart: "
                             f"no paddle module with the same tensors is left "
                             f"({len(self.left_t)} torch, {len(left_p)} paddle module(s) unpaired){self._nearest('torch', tm)}; "
                             + FIX + remedy())
        if left_p:
            pm = next(iter(left_p.values()))
            raise UsageError(f"weight mapping: paddle {describe(pm)}{self._called('paddle', pm)} is filled by no torch "
                             f"tensor: the torch model has no module with the same tensors left"
                             f"{self._nearest('paddle', pm)}; " + FIX + remedy())

    def _called(self, side: str, m: dict) -> str:
        trace = self.traces.get(side)
        return "" if trace is None or trace.calls(m["name"]) else " (never called)"

    def _nearest(self, side: str, m: dict) -> str:
        """The other side's closest candidates, by name, then shared tensors."""
        other = "paddle" if side == "torch" else "torch"
        pool = [(n, s) for (sd, n), s in self.sig.items() if sd == other and s]
        mine = dict(self.sig[side, m["name"]])

        def score(item):
            name, sig = item
            return (difflib.SequenceMatcher(None, name, m["name"]).ratio(), sum(mine.get(k) == v for k, v in sig))

        best = sorted(pool, key=score, reverse=True)[:2]
        if not best:
            return ""
        parts = []
        for name, sig in best:
            t_sig, p_sig = (self.sig[side, m["name"]], sig) if side == "torch" else (sig, self.sig[side, m["name"]])
            parts.append(f"{other} '{name}'{' (already paired)' if self._paired(other, name) else ''}: {difference(t_sig, p_sig)}")
        return "; nearest " + " | ".join(parts)

    def _paired(self, side: str, name: str) -> bool:
        return any((p.torch if side == "torch" else p.paddle) == name for p in self.pairs)


def _lacking(sig: dict, side: str, m: dict, pool: dict) -> str | None:
    """An unpaired module of the other side (`pool`) with one of m's tensors less or more (a Linear
    without its bias): the message, starting with that tensor. sig: (side, name) -> signature."""
    other = "paddle" if side == "torch" else "torch"
    mine = dict(sig[side, m["name"]])
    found = []
    for om in pool.values():
        theirs = dict(sig[other, om["name"]])
        shared = mine.keys() & theirs.keys()
        if shared and mine != theirs and all(mine[k] == theirs[k] for k in shared):
            found.append((difflib.SequenceMatcher(None, om["name"], m["name"]).ratio(), om))
    if not found:
        return None
    om = max(found, key=lambda f: f[0])[1]
    tm, pm = (m, om) if side == "torch" else (om, m)
    t_sig, p_sig = dict(sig["torch", tm["name"]]), dict(sig["paddle", pm["name"]])
    parts = [f"torch '{full_name(tm['name'], k)}' {list(t_sig[k])} has no paddle counterpart: paddle "
             f"{describe(pm)} has the rest of torch '{tm['name']}' but no {k}" for k in t_sig if k not in p_sig]
    parts += [f"paddle '{full_name(pm['name'], k)}' {list(p_sig[k])} is filled by no torch tensor: torch "
              f"{describe(tm)} has the rest of paddle '{pm['name']}' but no {k}" for k in p_sig if k not in t_sig]
    bias = "bias" in t_sig.keys() ^ p_sig.keys()
    return ("weight mapping: " + "; ".join(parts)
            + (" (a layer built without a bias on one side: bias_attr=False in paddle, bias=False in torch)"
               if bias else "") + "; the port differs there: fix it, or convert with your own torch_to_paddle(state)")
