"""Which torch dropout is which paddle dropout, so that a check can compare their probabilities.

A dropout site is a Dropout module, or a module that passes its own float probability to a
functional dropout (torch's and paddle's multi-head attention, HF's sdpa attention), as each
worker's module table reports it (`dropout_site`). Sites hold no weights, so they are placed by
the weight pairs around them: in each traced forward, a site's anchor is the last module of a
weight pair (called on both sides) entered before it. Sites with the same anchor pair in order
when both sides have as many there; otherwise none of them pairs, and they are listed unpaired
with the reason, never guessed.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DropoutPair:
    torch: str
    paddle: str
    torch_site: dict  # {p, mode, functional[, attribute]}
    paddle_site: dict
    after: str  # the anchor: the torch module of the weight pair called just before, "" at the start

    def to_json(self) -> dict:
        return {"torch": self.torch, "paddle": self.paddle, "torch_p": self.torch_site["p"],
                "paddle_p": self.paddle_site["p"], "torch_mode": self.torch_site["mode"],
                "paddle_mode": self.paddle_site["mode"], "torch_functional": self.torch_site["functional"],
                "paddle_functional": self.paddle_site["functional"], "after": self.after, "decided_by": "call order"}


def sites(modules: list) -> dict:
    return {m["name"]: m["dropout_site"] for m in modules if m.get("dropout_site")}


def _by_anchor(calls: list, site_names: dict, anchor_of: dict) -> dict:
    """(anchor torch module, its call index) -> the sites entered after it, in order."""
    groups: dict = {}
    anchor, seen = ("", 0), {}
    for name in calls:
        if name in site_names:  # an attention site is recorded before it becomes its own anchor
            groups.setdefault(anchor, []).append(name)
        if name in anchor_of:
            seen[name] = seen.get(name, 0) + 1
            anchor = (anchor_of[name], seen[name])
    return groups


def pair(*, torch_modules: list, paddle_modules: list, calls: dict, module_pairs: list) -> tuple:
    """(pairs, unpaired) where unpaired is [{side, name, p, why}]."""
    t_sites, p_sites = sites(torch_modules), sites(paddle_modules)
    t_calls, p_calls = calls.get("torch"), calls.get("paddle")
    if t_calls is None or p_calls is None:
        why = "no traced forward to place it by"
        return [], [{"side": s, "name": n, "p": v["p"], "why": why}
                    for s, table in (("torch", t_sites), ("paddle", p_sites)) for n, v in table.items()]
    t_called, p_called = set(t_calls), set(p_calls)
    both = [(t, p) for t, p in module_pairs if t in t_called and p in p_called]
    t_groups = _by_anchor(t_calls, t_sites, {t: t for t, _ in both})
    p_groups = _by_anchor(p_calls, p_sites, {p: t for t, p in both})
    pairs, unpaired, done = [], [], set()
    for anchor in dict.fromkeys([*t_groups, *p_groups]):
        ts, ps = t_groups.get(anchor, []), p_groups.get(anchor, [])
        if len(ts) == len(ps):
            for t, p in zip(ts, ps):
                if (t, p) not in done:
                    done.add((t, p))
                    pairs.append(DropoutPair(t, p, t_sites[t], p_sites[p], anchor[0]))
            continue
        where = f"after '{anchor[0]}'" if anchor[0] else "before any weight"
        why = f"{len(ts)} torch vs {len(ps)} paddle dropout site(s) {where}"
        unpaired += [{"side": "torch", "name": n, "p": t_sites[n]["p"], "why": why, "called": True} for n in ts]
        unpaired += [{"side": "paddle", "name": n, "p": p_sites[n]["p"], "why": why, "called": True} for n in ps]
    for side, table, called in (("torch", t_sites, t_called), ("paddle", p_sites, p_called)):
        unpaired += [{"side": side, "name": n, "p": v["p"], "why": "never called", "called": False}
                     for n, v in table.items() if n not in called]
    return pairs, _unique(unpaired)


def _unique(rows: list) -> list:
    seen, out = set(), []
    for r in rows:
        if (r["side"], r["name"]) not in seen:
            seen.add((r["side"], r["name"]))
            out.append(r)
    return out
