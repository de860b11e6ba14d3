"""Judging what one traced training step did after the gradients: the optimizer update (which
parameters moved differently, a decay pattern recognized) and, in train mode, BatchNorm
statistics (the running variance allowed its biased/unbiased gap, the running mean not)."""

from __future__ import annotations

from dataclasses import dataclass

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

    def update(self, check: str, recs: dict, before: dict, step: int, decay: str = "") -> Finding | None:
        """decay: how the two optimizers' weight decay differs ('' when alike or unknown)."""
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
        moved = Moved(initial, t_after, p_after, tr.get("grads", {}))
        detail = why_moved(bad, names, moved, step, decay=decay)
        rows = [{"module": n, "type": "parameter", "status": "DIFFERS" if n in bad else "agrees",
                 "out_shape": list(np.shape(t_after[n])),
                 "out_diff": float(np.mean(np.abs(np.asarray(t_after[n], np.float64) - p_after[n]))) if n in p_after else None}
                for n in names]
        first = names.index(bad[0])
        return Finding(check, "update", bad[0], step, detail, around=rows[max(0, first - AROUND): first + AROUND + 1])

    def applied(self, check: str, recs: dict, step: int) -> Finding | None:
        """This step's own gradients agree (GradientJudge); an optimizer that accumulates applies
        earlier steps' gradients too: do the gradients it applies agree?"""
        tr, pr = recs["torch"], recs["paddle"]
        if "applied" not in tr and "applied" not in pr:
            return None
        t = tr.get("applied", tr.get("grads", {}))
        p = self.match.as_torch(pr.get("applied", pr.get("grads", {})))
        for name in (n for n in t if n in p):
            d = compare_loose(name, t[name], p[name], self.tol.backward, scaled=True)
            if d.differs:
                held = [side for side, rec in (("torch", tr), ("paddle", pr)) if "applied" in rec]
                fresh = [side for side in ("torch", "paddle") if side not in held]
                detail = (f"this step's gradients agree at step {step}, but the gradients the optimizer applies differ "
                          f"({name}: {summary([d])}): {' and '.join(held)} still held gradients of earlier steps (its "
                          "optimizer accumulates: zero_grad / clear_grad left them)"
                          + (f", {fresh[0]} did not" if fresh else "")
                          + ": the optimizers' gradient accumulation (when they step and clear) differs")
                return Finding(check, "update", name, step, detail)
        return None

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


@dataclass(frozen=True)
class Moved:
    """One traced step's parameters (by torch name): before, after on each side, torch's gradients."""

    initial: dict
    t_after: dict
    p_after: dict
    grads: dict

    def updates(self, name: str) -> tuple:
        """(p0, torch's update, paddle's update) as flat float64 arrays."""
        p0 = np.asarray(self.initial[name], np.float64).reshape(-1)
        return (p0, np.asarray(self.t_after[name], np.float64).reshape(-1) - p0,
                np.asarray(self.p_after[name], np.float64).reshape(-1) - p0)


def why_moved(bad: list, names: list, moved: Moved, step: int, *, decay: str = "") -> str:
    """Name what differs in the optimizer: the decay (known from both optimizers, or recognized
    as a gap along the weights), where the updates differ by gradient size (epsilon, clipping),
    or a global scale (lr, clipping)."""
    text = (f"gradients agree at step {step} but {len(bad)} of {len(names)} parameters moved differently: "
            "the optimizer, its regularization or clipping differs")
    if decay:
        return f"{text}; {decay}"
    more, less, scale = [], [], []
    for n in (n for n in bad if n in moved.p_after):
        p0, dt, dp = moved.updates(n)
        gap = dp - dt
        cos = float(gap @ p0 / (np.linalg.norm(gap) * np.linalg.norm(p0))) if np.linalg.norm(p0) and np.linalg.norm(gap) else 0
        if abs(cos) > 0.99:
            (more if cos < 0 else less).append(n)
        elif np.linalg.norm(dt) > 0:
            scale.append(float(dp @ dt / (dt @ dt)))
    if more:
        text += (f"; decay applied to {len(more)} parameters that torch excludes (paddle shrinks them toward 0): "
                 + ", ".join(more[:12]) + (" ..." if len(more) > 12 else ""))
    if less:
        text += (f"; torch decays {len(less)} parameters that paddle excludes: "
                 + ", ".join(less[:12]) + (" ..." if len(less) > 12 else ""))
    if more or less:
        return text
    by_gradient = _by_gradient(bad, moved)
    if by_gradient:
        return f"{text}; {by_gradient}: " + ", ".join(bad[:8]) + (" ..." if len(bad) > 8 else "")
    return text + _scale(scale, bad, names, step)


def _scale(scale: list, bad: list, names: list, step: int) -> str:
    if not scale:
        return ": " + ", ".join(bad[:8])
    lo, hi = min(scale), max(scale)
    uniform = hi - lo <= 1e-3 * max(abs(hi), 1e-12)
    text = (f"; paddle's updates are {lo:.3g}x torch's" if uniform and len(scale) == len(bad) == len(names) else
            f"; paddle's updates are {lo:.3g}x to {hi:.3g}x torch's")
    if len(bad) == len(names) and uniform:  # a momentum acts from the second step on (its buffer starts as g)
        text += (" for every parameter: the learning rate (or a global clipping) differs" if step == 0 else
                 " for every parameter: the learning rate, the momentum (or a global clipping) differs")
    return text + ": " + ", ".join(bad[:8]) + (" ..." if len(bad) > 8 else "")


# where the updates differ, by the size of the element's gradient: the smallest tenth against the largest half
SMALL_SHARE, LARGE_SHARE, CONCENTRATED = 0.1, 0.5, 10.0


def _by_gradient(bad: list, moved: Moved) -> str:
    """An epsilon (Adam's) changes the update only where |g| is near it; element-wise clipping only
    where |g| exceeds the clip: the updates' relative gap, against the gradient's size, shows which."""
    rel, mag = [], []
    named = [n for n in bad if n in moved.p_after and n in moved.grads]
    largest = max((float(np.abs(np.asarray(moved.grads[n])).max()) for n in named if np.size(moved.grads[n])), default=0)
    for n in named:
        _, dt, dp = moved.updates(n)
        g = np.abs(np.asarray(moved.grads[n], np.float64).reshape(-1))
        keep = (dt != 0) & (g > rules.UNCONSTRAINED_RATIO * largest)  # a gradient, not rounding noise or none
        rel.append(np.abs(dp - dt)[keep] / np.abs(dt[keep]))
        mag.append(g[keep])
    if not rel or sum(r.size for r in rel) < 20:
        return ""
    rel, mag = np.concatenate(rel), np.concatenate(mag)
    order = np.argsort(mag)
    small = float(np.median(rel[order[: max(1, int(SMALL_SHARE * order.size))]]))
    large = float(np.median(rel[order[-max(1, int(LARGE_SHARE * order.size)):]]))
    bound = float(mag[order[max(0, int(SMALL_SHARE * order.size) - 1)]])
    if small > CONCENTRATED * large:
        return (f"the updates differ where the gradients are small (median {small:.2g} of the update for |g| <= "
                f"{bound:.2g}, {large:.2g} for the largest half): an epsilon difference (Adam's eps) acts there")
    if large > CONCENTRATED * small:
        return (f"the updates differ where the gradients are large (median {large:.2g} of the update for the "
                f"largest half, {small:.2g} for |g| <= {bound:.2g}): element-wise clipping (clip_value) acts there")
    return ""


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
