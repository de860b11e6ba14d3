"""Judging what one traced training step did after the gradients: the optimizer update (which
parameters moved differently, a decay pattern recognized) and, in train mode, BatchNorm
statistics (the running variance allowed its biased/unbiased gap, the running mean not)."""

from __future__ import annotations

import numpy as np

from harness.checks.common import judge
from harness.locate.leaves import AROUND, Finding, compare_loose, display, per_channel_count, summary
from harness.mapping import weights
from harness.verdict import keys, rules
from harness.verdict.keys import Kind
from harness.verdict.rules import Evidence


class UpdateJudge:
    def __init__(self, match, tol, adaptive: bool):
        self.match, self.tol, self.adaptive = match, tol, adaptive
        self.unconstrained: dict = {}  # parameter -> steps where it moved by rounding noise only
        self.variance_gap: dict = {}  # running_var buffer -> N of its biased/unbiased gap

    def update(self, check: str, recs: dict, before: dict, step: int) -> Finding | None:
        tr, pr = recs["torch"], recs["paddle"]
        mapped = {e.torch_name for e in self.match.plan.entries}
        names = [n for n in tr["params"] if n in mapped]
        t_after = {n: tr["state"][n] for n in names}
        p_state = self.match.as_torch(pr["state"])
        p_after = {n: p_state[n] for n in names if n in p_state}
        ref, other = keys.named(Kind.PARAM, t_after), keys.named(Kind.PARAM, p_after)
        initial = {n: before["state"][n] for n in names}
        evidence = Evidence(initial=initial, grads_ref=tr.get("grads", {}),
                            grads_other=self.match.as_torch(pr.get("grads", {})), adaptive=self.adaptive)
        result = judge("backward", ref, other, self.tol.backward, evidence)
        for k in result.keys:
            if k.rule == rules.UNCONSTRAINED:
                self.unconstrained.setdefault(k.id.name, []).append(step)
        bad = [k.id.name for k in result.failing]
        if not bad:
            return None
        detail = why_moved(bad, names, initial, t_after, p_after, step)
        rows = [{"module": n, "type": "parameter", "status": "DIFFERS" if n in bad else "agrees",
                 "out_shape": list(np.shape(t_after[n])),
                 "out_diff": float(np.mean(np.abs(np.asarray(t_after[n], np.float64) - p_after[n]))) if n in p_after else None}
                for n in names]
        first = names.index(bad[0])
        return Finding(check, "update", bad[0], step, detail, around=rows[max(0, first - AROUND): first + AROUND + 1])

    def buffers(self, check: str, recs: dict, before: dict, step: int) -> Finding | None:
        tr, pr = recs["torch"], recs["paddle"]
        p_state = self.match.as_torch(pr["state"])
        buffers = [n for n in tr["state"] if n not in tr["params"] and n in p_state]
        calls = {c["name"]: c for c in tr["calls"]}
        rows = []
        for name in buffers:
            module, local = weights.module_of(name), name.rsplit(".", 1)[-1]
            a, b = np.asarray(tr["state"][name]), np.asarray(p_state[name])
            d = compare_loose(name, a, b, self.tol.backward)
            differs, why = d.differs, summary([d])
            n = per_channel_count(calls.get(module), a.shape)
            if differs and local == "running_var" and n and n > 1 and a.shape == b.shape \
                    and rules.within_variance_gap(a, b, n, self.tol.backward.max_abs):
                differs = False
                self.variance_gap.setdefault(name, n)
            rows.append({"module": name, "type": "buffer", "out_shape": list(a.shape), "out_diff": d.mean_abs,
                         "status": "HERE" if differs else "agrees"})
            if differs:
                detail = f"{display(module)}: buffer {local} differs after train-mode step {step} ({why})"
                momentum = momentum_note(calls.get(module), before, name, a, b)
                if momentum:
                    detail += momentum
                return Finding(check, "buffer", module, step, detail, self.match.pairs.get(module),
                               around=rows[-AROUND * 2:])
        return None


def why_moved(bad, names, initial, t_after, p_after, step) -> str:
    """Recognize a decay applied to the wrong parameters and a global scale (lr, clipping)."""
    more, less, scale = [], [], []
    for n in bad:
        if n not in p_after:
            continue
        p0 = np.asarray(initial[n], np.float64).reshape(-1)
        dt = np.asarray(t_after[n], np.float64).reshape(-1) - p0
        dp = np.asarray(p_after[n], np.float64).reshape(-1) - p0
        gap = dp - dt
        if np.linalg.norm(p0) > 0 and np.linalg.norm(gap) > 0:
            cos = float(gap @ p0 / (np.linalg.norm(gap) * np.linalg.norm(p0)))
            if cos < -0.99:
                more.append(n)
                continue
            if cos > 0.99:
                less.append(n)
                continue
        if np.linalg.norm(dt) > 0:
            scale.append(float(dp @ dt / (dt @ dt)))
    text = (f"gradients agree at step {step} but {len(bad)} of {len(names)} parameters moved differently: "
            "the optimizer, its regularization or clipping differs")
    if more:
        text += (f"; decay applied to {len(more)} parameters that torch excludes (paddle shrinks them toward 0): "
                 + ", ".join(more[:12]) + (" ..." if len(more) > 12 else ""))
    if less:
        text += (f"; torch decays {len(less)} parameters that paddle excludes: "
                 + ", ".join(less[:12]) + (" ..." if len(less) > 12 else ""))
    if scale and not more and not less:
        lo, hi = min(scale), max(scale)
        text += (f"; paddle's updates are {lo:.3g}x torch's" if hi - lo <= 1e-3 * max(abs(hi), 1e-12) and
                 len(scale) == len(bad) and len(bad) == len(names) else
                 f"; paddle's updates are {lo:.3g}x to {hi:.3g}x torch's")
        if len(bad) == len(names) and hi - lo <= 1e-3 * max(abs(hi), 1e-12):
            text += " for every parameter: the learning rate (or a global clipping) differs"
        text += ": " + ", ".join(bad[:8]) + (" ..." if len(bad) > 8 else "")
    elif not more and not less:
        text += ": " + ", ".join(bad[:8])
    return text


def momentum_note(call, before, name, after_t, after_p) -> str:
    """Effective weight of the batch mean in the running mean, from the traced input."""
    if call is None or not name.endswith("running_mean") or name not in before["state"]:
        return ""
    x = next(iter(call["inputs"].values()), None)
    if x is None or x.ndim < 2 or x.shape[1] != after_t.shape[0]:
        return ""
    mu = np.asarray(x, np.float64).mean(axis=tuple(i for i in range(x.ndim) if i != 1))
    r0 = np.asarray(before["state"][name], np.float64)
    den = float((mu - r0) @ (mu - r0))
    if den == 0:
        return ""
    mt = float((after_t - r0) @ (mu - r0)) / den
    mp = float((after_p - r0) @ (mu - r0)) / den
    text = f": torch moves it {mt:.3g} of the way to the batch mean, paddle {mp:.3g}"
    if abs(mt + mp - 1) < 0.02:
        text += (f" — the momentum convention is confused (torch momentum {mt:.2g} is paddle momentum "
                 f"{1 - mt:.2g}: paddle's is the weight of the old value)")
    return text
