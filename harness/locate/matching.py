"""Which torch module is which paddle module, for comparing traced calls: pairs from the weight
map (itself decided by names, [mapping] and the set-up forward's call order, harness/mapping/pairing.py),
then equal structured names, then module kind and order of first call."""

from __future__ import annotations

import dataclasses

from harness.errors import UsageError
from harness.mapping import weights


class Match:
    """torch module name -> paddle module name, and paddle state -> torch names and layout.

    Pairs come from the weight map (module of each mapped tensor), then equal structured names,
    then, for what is left, module kind and order of first call.
    """

    def __init__(self, torch_modules: list, paddle_modules: list, plan: weights.Plan | None, *,
                 calls: dict | None = None):
        self.torch_modules = {m["name"]: m for m in torch_modules}
        self.paddle_modules = {m["name"]: m for m in paddle_modules}
        self.notes: list = []
        if plan is None:
            try:  # the automatic conversion, as the reference to judge a user's torch_to_paddle by
                plan = weights.plan(torch_modules, paddle_modules,
                                    traces={side: {"calls": c} for side, c in (calls or {}).items()})
            except UsageError:
                plan = None
        self.plan = plan
        self.pairs: dict = {}
        if plan is not None:  # a fused torch tensor fills several paddle children: pair with their parent
            owners: dict = {}
            for e in plan.entries:
                if not e.alias_of:
                    owners.setdefault(weights.module_of(e.torch_name), []).append(weights.module_of(e.paddle_name))
            for t, ps in owners.items():
                self.pairs[t] = _common_ancestor(ps)
        taken = set(self.pairs.values())
        for name in self.torch_modules:
            if name not in self.pairs and name in self.paddle_modules and name not in taken:
                self.pairs[name] = name
                taken.add(name)

    def complete(self, torch_calls: list, paddle_calls: list) -> None:
        """Pair what names could not by kind and order of first call, then build the per-module
        conversion when there was no weight map."""
        taken = set(self.pairs.values())
        left_t = _first_calls(torch_calls, lambda n: n not in self.pairs)
        left_p = _first_calls(paddle_calls, lambda n: n not in taken)
        unmatched = []
        for kind in dict.fromkeys(weights.kind(t) for _, t in left_t):
            ts = [n for n, t in left_t if weights.kind(t) == kind]
            ps = [n for n, t in left_p if weights.kind(t) == kind]
            if len(ts) == len(ps):
                self.pairs.update(zip(ts, ps))
            elif ts:
                unmatched.append(f"{len(ts)} torch {kind}" + (f" (vs {len(ps)} paddle)" if ps else ""))
        if unmatched:  # compared only through their neighbours: worth saying where nothing was located
            self.notes.append(f"modules without a counterpart, compared only through what their neighbours take "
                              f"and return: {', '.join(unmatched)}")
        if self.plan is None:
            entries = []
            for t, p in self.pairs.items():
                tm, pm = self.torch_modules.get(t), self.paddle_modules.get(p)
                if not tm or not pm or not (tm["params"] or tm["buffers"]):
                    continue
                try:
                    local = weights.plan([{**tm, "name": ""}], [{**pm, "name": ""}])
                except UsageError:
                    continue
                entries += [dataclasses.replace(e, torch_name=weights.full_name(t, e.torch_name),
                                                paddle_name=weights.full_name(p, e.paddle_name))
                            for e in local.entries if not e.alias_of]
            self.plan = weights.Plan(entries, [])

    def call_key(self, torch_key: str) -> str | None:
        name, index = torch_key.rsplit("#", 1)
        if name not in self.pairs:
            return None
        return f"{self.pairs[name]}#{index}"

    def as_torch(self, paddle_arrays: dict) -> dict:
        return self.plan.paddle_to_torch_names(paddle_arrays) if self.plan else {}

    def entry(self, torch_name: str):
        return next((e for e in self.plan.entries if e.torch_name == torch_name), None) if self.plan else None


def _common_ancestor(names: list) -> str:
    parts = [n.split(".") if n else [] for n in names]
    common = []
    for level in zip(*parts):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    return ".".join(common)


def _first_calls(calls: list, keep) -> list:
    seen, out = set(), []
    for c in sorted(calls, key=lambda c: c["order"]):
        if c["name"] not in seen and keep(c["name"]):
            seen.add(c["name"])
            out.append((c["name"], c["type"]))
    return out


def with_entry_order(record: dict) -> None:
    order = {k: i for i, k in enumerate(record["entered"])}
    for c in record["calls"]:
        c["order"] = order.get(c["key"], len(order))
