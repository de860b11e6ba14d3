"""A module call whose input already differs: which module's forward made the differing value.

On each side the value is traced back through the recorded calls: the call that returned it
(the innermost one that computed it, not one that only passed it on, as Dropout in eval mode or
Identity do), or, when no call returned it, the module whose forward made it with functional code
before calling the consumer. Then: the two sides feed the consumer from different modules (their
modules are wired differently); or a module with no counterpart on the other side computed it
(HF's GELU module, its attention's core, where paddle calls functions); or functional code in a
module's forward did."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from harness.locate.leaves import display, summary

MAX_HOPS = 8  # pass-through calls followed back (Dropout, Identity, a wrapper returning its input)


@dataclass(frozen=True)
class Origin:
    call: dict | None = None  # the call that returned the value, having computed it
    within: dict | None = None  # else the call whose forward made it; both None: the model's own input


def same(a, b) -> bool:
    return tuple(np.shape(a)) == tuple(np.shape(b)) and np.array_equal(np.asarray(a), np.asarray(b))


def holds(leaves: dict | None, value) -> bool:
    return any(same(v, value) for v in (leaves or {}).values())


class CallTree:
    """One side's traced calls: `calls` in exit order (children before their parent), `entered` the
    call keys in entry order."""

    def __init__(self, calls: list, entered: list):
        self.calls = [c for c in calls if c.get("outputs") is not None]
        self.by_key = {c["key"]: c for c in self.calls}
        self.exit = {c["key"]: i for i, c in enumerate(self.calls)}
        self.enter = {k: i for i, k in enumerate(entered)}
        self.children: dict = {}
        for c in self.calls:
            self.children.setdefault(c["parent"], []).append(c)

    def ancestors(self, call: dict) -> list:
        """Innermost first."""
        out, key = [], call["parent"]
        while key is not None and key in self.by_key:
            out.append(self.by_key[key])
            key = self.by_key[key]["parent"]
        return out

    def supplier(self, consumer: dict, value) -> dict | None:
        """The last call to return `value` before `consumer` was entered: one entered before it and
        not an ancestor of it, which has then already returned (calls nest)."""
        start = self.enter.get(consumer["key"], len(self.enter))
        for c in reversed(self.calls[: self.exit[consumer["key"]]]):
            if self.enter.get(c["key"], len(self.enter)) < start and holds(c["outputs"], value):
                return c
        return None

    def origin(self, consumer: dict, value) -> Origin:
        for _ in range(MAX_HOPS):
            made = self.supplier(consumer, value)
            if made is None:
                return Origin(within=next((a for a in self.ancestors(consumer) if not holds(a["inputs"], value)), None))
            made = self._innermost(made, value)
            if not holds(made["inputs"], value):
                return Origin(call=made)
            consumer = made  # it passed the value on: where did it get it
        return Origin()

    def _innermost(self, call: dict, value) -> dict:
        """Down the children that returned the value too: the one that computed it."""
        while True:
            inner = [c for c in self.children.get(call["key"], []) if holds(c["outputs"], value)]
            if not inner:
                return call
            call = inner[-1]


def _named(call: dict) -> str:
    return f"{display(call['name'])} ({call['type']})"


class Upstream:
    """Explains a compared call whose input differs (forward.py's judge asks), given every row of
    compared calls (torch call, its paddle counterpart, their input and output diffs)."""

    def __init__(self, match, recs: dict, rows: list):
        self.match, self.rows = match, {r["call"]["key"]: r for r in rows}
        self.trees = {side: CallTree(recs[side]["calls"], recs[side]["entered"]) for side in recs}
        self.torch_of = {p: t for t, p in match.pairs.items()}

    def explain(self, row: dict, before: dict | None) -> tuple:
        """(where, torch layer, paddle layer, detail) for the first differing call `row`; `before`:
        the compared call its parent made before it, if any (it agrees)."""
        call, pcall = row["call"], row["paddle"]
        at = next(i for i, d in enumerate(row["ins"]) if d.differs)
        tv, pv = list(call["inputs"].values())[at], list(pcall["inputs"].values())[at]
        gap = summary(row["ins"])
        t_tree, p_tree = self.trees["torch"], self.trees["paddle"]
        wired = self._wiring(call, pcall, t_tree.supplier(call, tv), p_tree.supplier(pcall, pv), gap)
        if wired:
            return wired
        t = t_tree.origin(call, tv)
        if t.call is not None and not self._agrees(t.call):
            return self._computed_by(t.call, call, gap)
        # functional code made it: in torch, or (torch passing an agreeing value on) in paddle
        p = p_tree.origin(pcall, pv) if t.within is None else Origin()
        within = t.within or (p.within and t_tree.by_key.get(self._torch_key(p.within)))
        parent = within or t_tree.by_key.get(call["parent"])
        name = parent["name"] if parent else ""
        side = f" (paddle's {display(p.within['name'])})" if t.within is None and p.within is not None else ""
        detail = (f"the difference arises inside {display(name)} ({parent['type'] if parent else '?'}){side}: the "
                  f"input of {display(call['name'])} already differs ({gap})"
                  + (f" while {display(before['name'])} before it agrees" if before else "")
                  + ": a functional operation in its forward differs")
        return "inside", name, self.match.pairs.get(name), detail

    def _wiring(self, call, pcall, t_sup, p_sup, gap) -> tuple | None:
        """Both sides feed the call from a compared module, but not from counterparts."""
        if t_sup is None or p_sup is None or t_sup["name"] not in self.match.pairs:
            return None
        other = self.torch_of.get(p_sup["name"])
        if other is None or other == t_sup["name"]:
            return None
        parent = self.trees["torch"].by_key.get(call["parent"])
        name = parent["name"] if parent else ""
        detail = (f"the difference arises inside {display(name)} ({parent['type'] if parent else '?'}): its modules "
                  f"are wired differently: torch's {_named(call)} takes what {_named(t_sup)} returns, its paddle "
                  f"counterpart {display(pcall['name'])} what {display(p_sup['name'])} returns, the counterpart of "
                  f"torch's {display(other)} ({gap})")
        return "inside", name, self.match.pairs.get(name), detail

    def _computed_by(self, made: dict, consumer: dict, gap: str) -> tuple:
        """A torch call paddle has no compared counterpart of computed the differing value."""
        tree = self.trees["torch"]
        kids = tree.children.get(made["key"], [])
        paddle = self.match.pairs.get(made["name"])
        unpaired = ("paddle has no module for it: it is compared through what it returns" if paddle is None
                    else f"its paddle counterpart {display(paddle)} is not compared with it")
        returned = f"what it returns, the input of {display(consumer['name'])}, differs ({gap})"
        if kids:
            return "inside", made["name"], paddle, (
                f"the difference arises inside {_named(made)}: {returned} while its {len(kids)} submodule "
                f"calls agree: a functional operation in its forward differs ({unpaired})")
        given = next(iter(made["inputs"].values()), None)
        source = tree.supplier(made, given) if given is not None else None
        parent = tree.by_key.get(made["parent"])
        return "forward", made["name"], paddle, (
            (f"the difference arises inside {_named(parent)}, in " if parent else "") + f"{_named(made)}: {returned}"
            + (f" while what it is given, the output of {display(source['name'])}, agrees"
               if source is not None and self._agrees(source) else "")
            + f": it computes differently from paddle's code there ({unpaired})")

    def _agrees(self, call: dict) -> bool:
        row = self.rows.get(call["key"])
        return row is not None and not row["out_differs"]

    def _torch_key(self, pcall: dict) -> str | None:
        name, index = pcall["key"].rsplit("#", 1)
        torch_name = self.torch_of.get(name)
        return None if torch_name is None else f"{torch_name}#{index}"
