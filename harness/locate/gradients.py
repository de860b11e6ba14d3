"""Judging one traced backward pass, in reverse call order: the gradient w.r.t. each module's
output, then its parameters' gradients; the first that differs is the place."""

from __future__ import annotations

from harness.locate.leaves import (
    Finding,
    LeafDiff,
    compare_leaves,
    compare_loose,
    display,
    shape_of,
    summary,
    window,
    worst,
)
from harness.mapping import weights


class GradientJudge:
    def __init__(self, match, tol):
        self.match, self.tol = match, tol

    def judge(self, check: str, recs: dict, step: int) -> Finding | None:
        tr, pr = recs["torch"], recs["paddle"]
        tol = self.tol.backward
        t_grads, p_grads = tr.get("grads", {}), self.match.as_torch(pr.get("grads", {}))
        by_key = {c["key"]: c for c in pr["calls"]}
        rows, checked_params = [], set()
        calls = list(reversed(tr["calls"]))
        for call in calls:
            pkey = self.match.call_key(call["key"])
            if pkey is None or pkey not in by_key:
                continue
            tg, pg = tr["out_grads"].get(call["key"]), pr["out_grads"].get(pkey)
            diffs = []
            if tg is not None or pg is not None:
                diffs = compare_leaves(tg, pg, tol, grad=True, scaled=True) if tg and pg else \
                    [LeafDiff("out", True, None, why=f"a gradient reaches it only in {'torch' if tg else 'paddle'}")]
            row = {"module": call["name"], "paddle": by_key[pkey]["name"], "type": call["type"],
                   "out_shape": shape_of(call["outputs"]), "out_grad_diff": worst(diffs),
                   "status": "DIFFERS" if any(d.differs for d in diffs) else "agrees"}
            rows.append(row)
            if any(d.differs for d in diffs):
                after = [r["module"] for r in rows[:-1][-3:]]
                nxt = _next_outside(tr["calls"], call)
                detail = (f"the gradient w.r.t. the output of {display(call['name'])} ({call['type']}) differs "
                          f"({summary(diffs)})" + (f" while the modules after it ({', '.join(map(display, after))}) "
                                                   "receive agreeing gradients" if after else
                                                   ": the gradient of the loss w.r.t. the model output")
                          + f" at step {step}, forward and loss agreeing"
                          + (f"; the next module to run after it is {display(nxt['name'])} ({nxt['type']}): the gradient "
                             "it (or a functional operation around it, e.g. a detach) passes back differs" if nxt else ""))
                return Finding(check, "grad", call["name"], step, detail, by_key[pkey]["name"],
                               self._grad_path(call, tr), window(rows, len(rows) - 1))
            if call["name"] not in checked_params:
                checked_params.add(call["name"])
                found = self._param_grads(check, step, call["name"], t_grads, p_grads, rows)
                if found:
                    return found
        for name in t_grads.keys() | p_grads.keys():  # parameters no traced call owns
            if weights.module_of(name) not in checked_params:
                found = self._param_grads(check, step, None, {name: t_grads.get(name)}, {name: p_grads.get(name)}, rows)
                if found:
                    return found
        return None

    def _param_grads(self, check, step, module, t_grads, p_grads, rows) -> Finding | None:
        tm = self.match.torch_modules.get(module) if module is not None else None
        names = [weights.full_name(module, p) for p in tm["params"]] if tm else list(t_grads)
        for name in names:
            a, b = t_grads.get(name), p_grads.get(name)
            if a is None and b is None:
                continue
            d = compare_loose(name, a, b, self.tol.backward, scaled=True)
            if d.differs:
                text = d.why if a is None or b is None else summary([d])
                if a is None or b is None:
                    text = f"a gradient only in {'paddle' if a is None else 'torch'} (frozen on the other side?)"
                return Finding(check, "param_grad", name, step,
                               f"the gradient of parameter {name} differs ({text}) while the gradient w.r.t. its "
                               f"module's output agrees, at step {step}: {display(module or weights.module_of(name))}'s "
                               "backward differs", around=window(rows, len(rows) - 1))
        return None

    @staticmethod
    def _grad_path(call, tr) -> list:
        by_key = {c["key"]: c for c in tr["calls"]}
        chain, key = [], call["key"]
        while key is not None and key in by_key:
            c = by_key[key]
            chain.append({"module": display(c["name"]), "type": c["type"], "diff": None, "differs": key == call["key"]})
            key = c["parent"]
        return list(reversed(chain))


def _next_outside(calls: list, call: dict) -> dict | None:
    """The first call entered after `call` that is not inside it."""
    inside = {call["key"]}
    for c in sorted(calls, key=lambda c: c["order"]):
        if c["order"] <= call["order"]:
            continue
        if c["parent"] in inside:
            inside.add(c["key"])
            continue
        return c
    return None
