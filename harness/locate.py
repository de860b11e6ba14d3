"""Where the two part ways: re-run the failing step with hooks on every module and name the first
module, parameter, gradient, update or buffer that differs. Framework-free.

How a step is judged (each step of a traced training run starts from equal weights: paddle gets
torch's state before every step, so each difference found is made *in* that step):
  1. forward: only if the model output or the loss differs. The first module call (in the order
     calls finish, so children before parents) whose output differs is the place. Its inputs
     agree and it has no differing child: its own computation or its parameters differ. Its
     inputs already differ: a functional operation in the calling module made the difference.
     A module whose children all agree but whose output differs: a functional op inside it.
  2. backward: gradients w.r.t. module outputs, then parameter gradients, in reverse order.
  3. update: gradients agree but parameters moved differently: the optimizer, its decay or
     clipping; the parameters that moved differently are named, a decay pattern is recognized.
  4. buffers (train mode): BatchNorm statistics per layer; the running variance is allowed its
     biased/unbiased gap (FACTS.md), the running mean is not.
Differences that only change size-1 axes are compared after squeezing/broadcasting, not blamed.
Dropout modules are switched to eval mode in traced train-mode steps (each framework draws its
own masks), and the report says so.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from harness import weights
from harness.config import Tolerance
from harness.diff import CheckResult, KeyResult, compare_arrays, compare_dicts
from harness.errors import UsageError, WorkerError
from harness.report import Divergence

SIDES = ("torch", "paddle")
# Gradients and updates differ when the gap exceeds this fraction of their own mean magnitude
# (and the absolute tolerance): float32 noise in a correct port stays near 1e-6 of it.
GRAD_RTOL = 1e-4
# Traced steps for a failing train check (each step ships every activation home).
TRAIN_TRACE_STEPS = 8
MAX_TRACE_STEPS = 50
AROUND = 3  # table rows either side of the diverging module


def display(name: str) -> str:
    return name or "(model)"


def _kind(module_type: str) -> str:
    return weights.kind(module_type)


# ---------------------------------------------------------------------- comparing leaves
@dataclass
class LeafDiff:
    key: str
    differs: bool
    shape: list | None
    shape_other: list | None = None
    mean_abs: float | None = None
    max_abs: float | None = None
    rel: float | None = None  # mean |d| / mean |torch|
    why: str = ""


def compare_loose(key: str, a, b, tol: Tolerance, rtol: float | None = None, grad: bool = False) -> LeafDiff:
    """compare_arrays, except that shapes differing only in size-1 axes (squeezed or broadcast)
    are compared after aligning them, and dtypes of one kind are compared in the narrower one.
    For gradients (grad=True) a broadcast axis is summed instead: the gradient w.r.t. a (1, T, H)
    tensor is the sum over the batch of the gradient w.r.t. its (B, T, H) expansion."""
    if a is None or b is None:
        side = "torch" if b is None else "paddle"
        return LeafDiff(key, True, None if a is None else list(np.shape(a)), why=f"only in {side}")
    a, b = np.asarray(a), np.asarray(b)
    shape, other = list(a.shape), list(b.shape)
    note = ""
    if a.shape != b.shape:
        if [d for d in a.shape if d != 1] == [d for d in b.shape if d != 1]:
            a, b = a.reshape([d for d in a.shape if d != 1]), b.reshape([d for d in b.shape if d != 1])
            note = "compared with size-1 axes dropped"
        else:
            try:
                common = np.broadcast_shapes(a.shape, b.shape)
            except ValueError:
                return LeafDiff(key, True, shape, other, why=f"shape {tuple(shape)} (torch) vs {tuple(other)} (paddle)")
            if len(a.shape) != len(b.shape):
                return LeafDiff(key, True, shape, other, why=f"shape {tuple(shape)} (torch) vs {tuple(other)} (paddle)")
            if grad:
                a = a.sum(axis=tuple(i for i, (x, y) in enumerate(zip(a.shape, b.shape)) if y == 1 and x != 1),
                          keepdims=True)
                b = b.sum(axis=tuple(i for i, (x, y) in enumerate(zip(a.shape, b.shape)) if x == 1 and y != 1),
                          keepdims=True)
                note = "compared after summing the broadcast axes"
            else:
                a, b = np.broadcast_to(a, common), np.broadcast_to(b, common)
                note = "compared after broadcasting size-1 axes"
    if a.dtype != b.dtype and a.dtype.kind == b.dtype.kind:
        narrow = a.dtype if a.dtype.itemsize <= b.dtype.itemsize else b.dtype
        a, b = a.astype(narrow), b.astype(narrow)
    res: KeyResult = compare_arrays(key, a, b, tol)
    differs = not res.passed
    rel = None
    if res.mean_abs is not None:
        scale = float(np.mean(np.abs(a.astype(np.float64)))) if a.size else 0.0
        rel = res.mean_abs / scale if scale > 0 else (0.0 if res.mean_abs == 0 else float("inf"))
        if differs and rtol is not None and not res.nonfinite and rel <= rtol:
            differs = False
    why = res.reason or note
    return LeafDiff(key, differs, shape, other if other != shape else None, res.mean_abs, res.max_abs, rel, why)


def compare_leaves(ref: dict | None, other: dict | None, tol: Tolerance, rtol: float | None = None,
                   grad: bool = False) -> list:
    """Tensor leaves by position (torch MHA returns (out, weights), paddle's only out: the
    extra leaves are left out, not blamed)."""
    ref, other = ref or {}, other or {}
    pairs = list(zip(ref.items(), other.items()))
    return [compare_loose(ka, va, vb, tol, rtol, grad) for (ka, va), (_, vb) in pairs]


def worst(diffs: list) -> float | None:
    vals = [d.mean_abs for d in diffs if d.mean_abs is not None]
    return max(vals) if vals else None


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.3g}"


def _summary(diffs: list) -> str:
    bad = [d for d in diffs if d.differs]
    if not diffs:
        return "nothing compared"
    d = bad[0] if bad else max(diffs, key=lambda d: d.mean_abs or 0.0)
    text = f"mean |d| {_fmt(d.mean_abs)}, max |d| {_fmt(d.max_abs)}"
    if d.rel is not None:
        text += f" ({_fmt(d.rel)} of its mean magnitude)"
    if d.why and not d.mean_abs:
        text = d.why
    return text


# ---------------------------------------------------------------------- the finding
@dataclass
class Finding:
    check: str
    where: str  # parameter | forward | inside | after_model | loss | grad | param_grad | update | buffer | lr | metric
    layer: str | None
    step: int | None
    detail: str
    paddle_layer: str | None = None
    path: list = field(default_factory=list)  # root -> layer: {"module", "type", "diff"}
    around: list = field(default_factory=list)  # table rows: {"module", "paddle", "type", "in_shape", ...}

    def divergence(self) -> Divergence:
        return Divergence(self.check, self.where, self.layer, self.step, self.detail, self.paddle_layer,
                          self.path, self.around)


@dataclass
class Outcome:
    finding: Finding | None = None
    notes: list = field(default_factory=list)


# ---------------------------------------------------------------------- matching
class Match:
    """torch module name -> paddle module name, and paddle state -> torch names and layout.

    Pairs come from the weight map (module of each mapped tensor), then equal structured names,
    then, for what is left, module kind and order of first call.
    """

    def __init__(self, torch_modules: list, paddle_modules: list, plan: weights.Plan | None):
        self.torch_modules = {m["name"]: m for m in torch_modules}
        self.paddle_modules = {m["name"]: m for m in paddle_modules}
        self.notes: list = []
        if plan is None:
            try:  # the automatic conversion, as the reference to judge a user's torch_to_paddle by
                plan = weights.plan(torch_modules, paddle_modules)
            except UsageError:
                plan = None
        self.plan = plan
        self.pairs: dict = {}
        if plan is not None:  # a fused torch tensor fills several paddle children: pair with their parent
            owners: dict = {}
            for e in plan.entries:
                if not e.alias_of:
                    owners.setdefault(_module_of(e.torch_name), []).append(_module_of(e.paddle_name))
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
        for kind in dict.fromkeys(_kind(t) for _, t in left_t):
            ts = [n for n, t in left_t if _kind(t) == kind]
            ps = [n for n, t in left_p if _kind(t) == kind]
            if len(ts) == len(ps):
                self.pairs.update(zip(ts, ps))
            elif ts:
                self.notes.append(f"{len(ts)} torch vs {len(ps)} paddle unmatched {kind} modules: not compared")
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
                entries += [dataclasses.replace(e, torch_name=_join(t, e.torch_name), paddle_name=_join(p, e.paddle_name))
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


def _module_of(tensor_name: str) -> str:
    return tensor_name.rsplit(".", 1)[0] if "." in tensor_name else ""


def _join(module: str, local: str) -> str:
    return f"{module}.{local}" if module else local


def _first_calls(calls: list, keep) -> list:
    seen, out = set(), []
    for c in sorted(calls, key=lambda c: c["order"]):
        if c["name"] not in seen and keep(c["name"]):
            seen.add(c["name"])
            out.append((c["name"], c["type"]))
    return out


def _with_entry_order(record: dict) -> None:
    order = {k: i for i, k in enumerate(record["entered"])}
    for c in record["calls"]:
        c["order"] = order.get(c["key"], len(order))


# ---------------------------------------------------------------------- the locator
class Locator:
    def __init__(self, session):
        self.s = session
        self.cfg = session.cfg
        self.tol = session.cfg.tolerance
        self.match: Match | None = None
        self.outcome = Outcome()
        self._paddle_as_torch: dict | None = None  # paddle's initial state under torch names
        self.dropout_off = False  # dropout modules were switched off in a traced train-mode run
        self.unconstrained: dict = {}  # parameter -> steps where it moved by rounding noise only
        self.variance_gap: dict = {}  # running_var buffer -> N of its biased/unbiased gap

    def summarize(self) -> None:
        if self.unconstrained:
            names = sorted(self.unconstrained)
            self.outcome.notes.append(
                f"{len(names)} parameter(s) whose gradient is rounding noise (wholly or in part) moved differently "
                f"under an adaptive optimizer and were not judged there: {', '.join(names[:6])}"
                + (" ..." if len(names) > 6 else "") + " (e.g. a bias right before BatchNorm)")
        if self.variance_gap:
            names = sorted(self.variance_gap)
            self.outcome.notes.append(
                f"{', '.join(names[:4])}{' ...' if len(names) > 4 else ''}: within the gap of torch's unbiased vs "
                "paddle's biased batch variance (at most running_var / N per update), not judged a divergence")

    # ------------------------------------------------------------ driving the workers
    def begin(self, mode: str, total_steps: int) -> dict:
        dropout = {side: [m["name"] for m in self.s.infos[side]["modules"] if m.get("dropout")] for side in SIDES}
        if mode == "train" and (dropout["torch"] or dropout["paddle"]):
            self.dropout_off = True
            names = dropout["torch"] or dropout["paddle"]
            self.outcome.notes.append(
                f"dropout modules ({', '.join(map(display, names[:3]))}{' ...' if len(names) > 3 else ''}) were put in "
                "eval mode for "
                "the traced train-mode steps: each framework draws its own masks, so a comparison with dropout on "
                "would only show that")
        reqs = {side: {"mode": mode, "total_steps": total_steps, "eval_modules": tuple(dropout[side])} for side in SIDES}
        from harness.protocol import Request

        return self.s.group.call({side: Request("trace_begin", reqs[side]) for side in SIDES})

    def step(self, batch: dict, backward: bool, update: bool, with_loss: bool, sync: dict | None) -> dict:
        from harness.protocol import Request

        kwargs = {"batch": batch, "backward": backward, "update": update, "with_loss": with_loss}
        paddle_kwargs = dict(kwargs)
        if sync is not None:  # through the conversion the run itself used
            if self.s.plan is None:
                paddle_kwargs.update(sync=sync, raw=True)
            else:
                paddle_kwargs.update(sync=self.s.plan.to_paddle(sync), raw=False)
        recs = self.s.group.call({"torch": Request("trace_step", kwargs), "paddle": Request("trace_step", paddle_kwargs)})
        for rec in recs.values():
            _with_entry_order(rec)
        if self.match is None:
            self.match = Match(self.s.infos["torch"]["modules"], self.s.infos["paddle"]["modules"], self.s.plan)
        if not getattr(self, "_completed", False):
            self.match.complete(recs["torch"]["calls"], recs["paddle"]["calls"])
            self._completed = True
            self.outcome.notes += self.match.notes
        return recs

    # ------------------------------------------------------------ entry points
    def forward_trace(self, check: str, batches: list, with_loss: bool, steps: list | None = None) -> Finding | None:
        begin = self.begin("eval", self.cfg.total_steps)
        for i, batch in enumerate(batches):
            recs = self.step(batch, backward=False, update=False, with_loss=with_loss, sync=None)
            step = steps[i] if steps else i
            found = self.judge_forward(check, recs, begin, step, with_loss)
            if found:
                return found
        return None

    def train_trace(self, check: str, mode: str, steps: int) -> Finding | None:
        begin = self.begin(mode, self.cfg.total_steps if check != "train" else (self.cfg.lr_scheduler.total_steps
                                                                                 or self.cfg.train.train_iters))
        before = begin
        for k in range(steps):
            sync = before["torch"]["state"] if k > 0 else None
            recs = self.step(self.s.data.batch(k), backward=True, update=True, with_loss=True, sync=sync)
            found = (self.judge_forward(check, recs, before, k, True)
                     or self.judge_backward(check, recs, k)
                     or self.judge_update(check, recs, before["torch"], k)
                     or (self.judge_buffers(check, recs, before["torch"], k) if mode == "train" else None))
            if found:
                return found
            # paddle starts the next step from torch's weights: no mapping left to judge there
            before = {"torch": {"state": recs["torch"]["state"]}, "paddle": {"state": None}}
        return None

    # ------------------------------------------------------------ forward
    def judge_forward(self, check: str, recs: dict, begin: dict, step: int, with_loss: bool) -> Finding | None:
        tr, pr = recs["torch"], recs["paddle"]
        out_diffs = compare_leaves(tr["output"], pr["output"], self.tol.forward)
        loss_diff = None
        if with_loss and "loss" in tr and "loss" in pr:
            loss_diff = compare_loose("loss", tr["loss"], pr["loss"], self.tol.loss)
        output_differs = any(d.differs for d in out_diffs) or len(tr["output"]) != len(pr["output"])
        if not output_differs and not (loss_diff and loss_diff.differs):
            return None  # what the check judges agrees: an intermediate gap here is no divergence
        rows = self.forward_rows(tr, pr)
        first = next((r for r in rows if r["out_differs"]), None)
        if first is None:
            if output_differs:
                return Finding(check, "after_model", None, step,
                               "every module's output agrees, the outputs returned differ: the difference is made "
                               "after the model, in the pair's forward_torch/forward_paddle or the output's structure "
                               f"({_summary(out_diffs)})", around=self._around(rows, len(rows) - 1))
            return Finding(check, "loss", None, step,
                           f"the model outputs agree, the losses differ ({_summary([loss_diff])}): the loss function "
                           "differs (check reduction, class axis, label smoothing, ignore_index)")
        index = rows.index(first)
        call = first["call"]
        parent_key = call["parent"]
        if first["in_differs"]:
            where, layer = "inside", parent_key.rsplit("#", 1)[0] if parent_key else ""
            before = self._previous_sibling(rows, index, parent_key)
            detail = (f"the difference arises inside {display(layer)} ({self._type(layer)}): the input of "
                      f"{display(call['name'])} already differs ({_summary(first['ins'])})"
                      + (f" while {display(before['call']['name'])} before it agrees" if before else "")
                      + ": a functional operation (not a module) in its forward differs")
            paddle_layer = self.match.pairs.get(layer)
        else:
            layer = call["name"]
            paddle_layer = first["paddle"]["name"]
            children = [r for r in rows[:index] if r["call"]["parent"] == call["key"]]
            params = self.param_diffs(layer, begin)
            bad = [p for p in params if p["differs"]]
            if bad:
                where = "parameter"
                detail = (f"{display(layer)} ({call['type']}): its parameters differ after mapping: "
                          + "; ".join(f"{p['name']}: {p['why']}" for p in bad[:4]))
            elif children:
                where = "inside"
                detail = (f"the difference arises inside {display(layer)} ({call['type']}): its inputs and the outputs "
                          f"of its {len(children)} submodule calls agree, its output differs "
                          f"({_summary(first['outs'])}): a functional operation in its forward differs")
            else:
                where = "forward"
                types = call["type"] if call["type"] == first["paddle"]["type"] else \
                    f"torch {call['type']} vs paddle {first['paddle']['type']}"
                detail = (f"{display(layer)} ({types}) computes differently: inputs agree"
                          + (", parameters agree" if params else "")
                          + f", output differs ({_summary(first['outs'])})"
                          + (f" [paddle: {display(paddle_layer)}]" if paddle_layer != layer else ""))
        if step and check in ("backward", "train"):
            detail += f" (step {step}, both sides starting it from torch's weights)"
        path = self._path(rows, parent_key if where == "inside" and first["in_differs"] else call["key"])
        return Finding(check, where, layer, step, detail, paddle_layer, path, self._around(rows, index))

    def forward_rows(self, tr: dict, pr: dict) -> list:
        by_key = {c["key"]: c for c in pr["calls"]}
        rows = []
        for call in tr["calls"]:
            pkey = self.match.call_key(call["key"])
            pcall = by_key.get(pkey) if pkey else None
            if pcall is None or call["outputs"] is None or pcall["outputs"] is None:
                continue
            ins = compare_leaves(call["inputs"], pcall["inputs"], self.tol.forward)
            outs = compare_leaves(call["outputs"], pcall["outputs"], self.tol.forward)
            rows.append({"call": call, "paddle": pcall, "ins": ins, "outs": outs,
                         "in_differs": any(d.differs for d in ins), "out_differs": any(d.differs for d in outs)})
        return rows

    def param_diffs(self, module: str, begin: dict) -> list:
        """The module's own tensors, torch vs paddle converted back by the reference mapping."""
        tm = self.match.torch_modules.get(module)
        if not tm or not begin.get("paddle", {}).get("state"):
            return []
        t_state, p_state = begin["torch"]["state"], begin["paddle"]["state"]
        if self._paddle_as_torch is None:
            self._paddle_as_torch = self.match.as_torch(p_state)
        converted = self._paddle_as_torch
        out = []
        for local in list(tm["params"]) + list(tm["buffers"]):
            tname = _join(module, local)
            if tname not in t_state or tname not in converted:
                continue
            d = compare_loose(tname, t_state[tname], converted[tname], self.tol.forward)
            why = d.why
            e = self.match.entry(tname)
            if d.differs and e is not None and e.transpose and not e.part and e.paddle_name in p_state \
                    and np.shape(p_state[e.paddle_name]) == np.shape(t_state[tname]) \
                    and np.allclose(p_state[e.paddle_name], t_state[tname], rtol=0, atol=1e-7):
                why = ("paddle holds torch's weight untransposed (torch Linear [out, in] must become paddle "
                       "[in, out]; a square weight loads either way)")
            out.append({"name": tname, "differs": d.differs, "why": why or _summary([d])})
        return out

    # ------------------------------------------------------------ backward
    def judge_backward(self, check: str, recs: dict, step: int) -> Finding | None:
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
                diffs = compare_leaves(tg, pg, tol, GRAD_RTOL, grad=True) if tg and pg else \
                    [LeafDiff("out", True, None, why=f"a gradient reaches it only in {'torch' if tg else 'paddle'}")]
            row = {"module": call["name"], "paddle": by_key[pkey]["name"], "type": call["type"],
                   "out_shape": _shape(call["outputs"]), "out_grad_diff": worst(diffs),
                   "status": "DIFFERS" if any(d.differs for d in diffs) else "agrees"}
            rows.append(row)
            if any(d.differs for d in diffs):
                after = [r["module"] for r in rows[:-1][-3:]]
                nxt = _next_outside(tr["calls"], call)
                detail = (f"the gradient w.r.t. the output of {display(call['name'])} ({call['type']}) differs "
                          f"({_summary(diffs)})" + (f" while the modules after it ({', '.join(map(display, after))}) "
                                                   "receive agreeing gradients" if after else
                                                   ": the gradient of the loss w.r.t. the model output")
                          + f" at step {step}, forward and loss agreeing"
                          + (f"; the next module to run after it is {display(nxt['name'])} ({nxt['type']}): the gradient "
                             "it (or a functional operation around it, e.g. a detach) passes back differs" if nxt else ""))
                return Finding(check, "grad", call["name"], step, detail, by_key[pkey]["name"],
                               self._grad_path(call, tr), _window(rows, len(rows) - 1))
            if call["name"] not in checked_params:
                checked_params.add(call["name"])
                found = self._param_grads(check, step, call["name"], t_grads, p_grads, rows)
                if found:
                    return found
        for name in t_grads.keys() | p_grads.keys():  # parameters no traced call owns
            if _module_of(name) not in checked_params:
                found = self._param_grads(check, step, None, {name: t_grads.get(name)}, {name: p_grads.get(name)}, rows)
                if found:
                    return found
        return None

    def _param_grads(self, check, step, module, t_grads, p_grads, rows) -> Finding | None:
        tm = self.match.torch_modules.get(module) if module is not None else None
        names = [_join(module, p) for p in tm["params"]] if tm else list(t_grads)
        for name in names:
            a, b = t_grads.get(name), p_grads.get(name)
            if a is None and b is None:
                continue
            d = compare_loose(name, a, b, self.tol.backward, GRAD_RTOL)
            if d.differs:
                text = d.why if a is None or b is None else _summary([d])
                if a is None or b is None:
                    text = f"a gradient only in {'paddle' if a is None else 'torch'} (frozen on the other side?)"
                return Finding(check, "param_grad", name, step,
                               f"the gradient of parameter {name} differs ({text}) while the gradient w.r.t. its "
                               f"module's output agrees, at step {step}: {display(module or _module_of(name))}'s "
                               "backward differs", around=_window(rows, len(rows) - 1))
        return None

    # ------------------------------------------------------------ update
    def judge_update(self, check: str, recs: dict, before: dict, step: int) -> Finding | None:
        from harness.coordinator import judge_by_scale

        tr, pr = recs["torch"], recs["paddle"]
        mapped = {e.torch_name for e in self.match.plan.entries}
        names = [n for n in tr["params"] if n in mapped]
        t_after = {n: tr["state"][n] for n in names}
        p_state = self.match.as_torch(pr["state"])
        p_after = {n: p_state[n] for n in names if n in p_state}
        ref, other = {f"param:{n}": v for n, v in t_after.items()}, {f"param:{n}": v for n, v in p_after.items()}
        result = compare_dicts("backward", ref, other, self.tol.backward)
        grads_t, grads_p = tr.get("grads", {}), self.match.as_torch(pr.get("grads", {}))
        initial = {n: before["state"][n] for n in names}
        adaptive = self.s._adaptive(None)
        judge_by_scale(result, ref, other, initial, grads_t, grads_p, adaptive)
        for k in result.keys:
            if "unconstrained" in k.note:
                self.unconstrained.setdefault(k.key.split(":", 1)[1], []).append(step)
        bad = [k.key.split(":", 1)[1] for k in result.failing]
        if not bad:
            return None
        detail = self._why_moved(bad, names, initial, t_after, p_after, step)
        rows = [{"module": n, "type": "parameter", "status": "DIFFERS" if n in bad else "agrees",
                 "out_shape": list(np.shape(t_after[n])),
                 "out_diff": float(np.mean(np.abs(np.asarray(t_after[n], np.float64) - p_after[n]))) if n in p_after else None}
                for n in names]
        first = names.index(bad[0])
        return Finding(check, "update", bad[0], step, detail, around=rows[max(0, first - AROUND): first + AROUND + 1])

    def _why_moved(self, bad, names, initial, t_after, p_after, step) -> str:
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

    # ------------------------------------------------------------ buffers
    def judge_buffers(self, check: str, recs: dict, before: dict, step: int) -> Finding | None:
        tr, pr = recs["torch"], recs["paddle"]
        p_state = self.match.as_torch(pr["state"])
        buffers = [n for n in tr["state"] if n not in tr["params"] and n in p_state]
        calls = {c["name"]: c for c in tr["calls"]}
        rows = []
        for name in buffers:
            module, local = _module_of(name), name.rsplit(".", 1)[-1]
            a, b = np.asarray(tr["state"][name]), np.asarray(p_state[name])
            d = compare_loose(name, a, b, self.tol.backward)
            differs, why = d.differs, _summary([d])
            n = _per_channel_count(calls.get(module), a.shape)
            if differs and local == "running_var" and n and n > 1 and a.shape == b.shape:
                gap = np.abs(a.astype(np.float64) - b)
                # torch updates with the unbiased batch variance, paddle with the biased one: their
                # running values part by at most running_var / N per update (FACTS.md)
                if np.all(gap <= np.abs(a) / n * 1.01 + self.tol.backward.max_abs):
                    differs = False
                    self.variance_gap.setdefault(name, n)
            rows.append({"module": name, "type": "buffer", "out_shape": list(a.shape), "out_diff": d.mean_abs,
                         "status": "HERE" if differs else "agrees"})
            if differs:
                detail = f"{display(module)}: buffer {local} differs after train-mode step {step} ({why})"
                momentum = self._momentum(calls.get(module), before, name, a, b)
                if momentum:
                    detail += momentum
                return Finding(check, "buffer", module, step, detail, self.match.pairs.get(module),
                               around=rows[-AROUND * 2:])
        return None

    def _momentum(self, call, before, name, after_t, after_p) -> str:
        """Effective weight of the batch mean in the running mean, from the traced input."""
        if call is None or not name.endswith("running_mean") or name not in before["state"]:
            return ""
        x = next(iter(call["inputs"].values()), None)
        if x is None or x.ndim < 2 or x.shape[1] != after_t.shape[0]:
            return ""
        mu = x.astype(np.float64).mean(axis=tuple(i for i in range(x.ndim) if i != 1))
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

    # ------------------------------------------------------------ rendering helpers
    def _type(self, name: str) -> str:
        return self.match.torch_modules.get(name, {}).get("type", "?")

    def _previous_sibling(self, rows, index, parent_key):
        for r in reversed(rows[:index]):
            if r["call"]["parent"] == parent_key:
                return r
        return None

    def _path(self, rows, key) -> list:
        by_key = {r["call"]["key"]: r for r in rows}
        chain = []
        while key is not None and key in by_key:
            r = by_key[key]
            chain.append({"module": display(r["call"]["name"]), "type": r["call"]["type"],
                          "diff": worst(r["outs"]), "differs": r["out_differs"]})
            key = r["call"]["parent"]
        return list(reversed(chain))

    def _grad_path(self, call, tr) -> list:
        by_key = {c["key"]: c for c in tr["calls"]}
        chain, key = [], call["key"]
        while key is not None and key in by_key:
            c = by_key[key]
            chain.append({"module": display(c["name"]), "type": c["type"], "diff": None, "differs": key == call["key"]})
            key = c["parent"]
        return list(reversed(chain))

    def _around(self, rows, index) -> list:
        table = []
        for r in rows[max(0, index - AROUND): index + AROUND + 1]:
            call_no = int(r["call"]["key"].rsplit("#", 1)[1])
            suffix = f" [call {call_no + 1}]" if call_no else ""
            table.append({"module": display(r["call"]["name"]) + suffix, "paddle": display(r["paddle"]["name"]),
                          "type": r["call"]["type"] if r["call"]["type"] == r["paddle"]["type"]
                          else f"{r['call']['type']} / {r['paddle']['type']}",
                          "in_shape": _shape(r["call"]["inputs"]), "out_shape": _shape(r["call"]["outputs"]),
                          "in_diff": worst(r["ins"]), "out_diff": worst(r["outs"]),
                          "status": ("HERE" if r is rows[index] else "DIFFERS") if r["out_differs"] else "agrees"})
        return table


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


def _window(rows: list, index: int) -> list:
    return rows[max(0, index - AROUND * 2): index + 1]


def _shape(leaves: dict | None) -> list | None:
    if not leaves:
        return None
    return list(np.shape(next(iter(leaves.values()))))


def _per_channel_count(call, shape) -> int | None:
    if call is None or not shape:
        return None
    x = next(iter(call["inputs"].values()), None)
    if x is None or x.ndim < 2 or x.shape[1] != shape[0]:
        return None
    return int(x.size // shape[0])


# ---------------------------------------------------------------------- what to trace
def locate(session, checks: list, always: bool = False) -> Outcome:
    """Trace the first failing check (or, with always and nothing failing, a forward pass and the
    training steps) and return what was found. Never raises for a localization problem: a worker
    failure while tracing becomes a note, the checks' verdicts stand."""
    loc = Locator(session)
    failing = next((c for c in checks if not c.passed), None)
    try:
        if failing is not None:
            loc.outcome.finding = _for_check(loc, failing)
            if loc.outcome.finding is None and loc.dropout_off:
                loc.outcome.notes.append(
                    f"with dropout off every traced step agrees: the {failing.name} failure comes from the dropout "
                    "masks each framework draws; set p = 0 (or [train] mode = \"eval\") for this check")
        elif always:
            loc.outcome.finding = _everything(loc)
    except WorkerError as exc:
        loc.outcome.notes.append(f"localization stopped: {exc}")
    except Exception as exc:  # noqa: BLE001 - a bug of ours must not cost the user the checks' verdicts
        loc.outcome.finding = None
        loc.outcome.notes.append(f"localization failed (internal error, please report it): {type(exc).__name__}: {exc}")
    loc.summarize()
    return loc.outcome


def _for_check(loc: Locator, check: CheckResult) -> Finding | None:
    s, cfg = loc.s, loc.cfg
    name = check.name
    if name == "forward":
        return loc.forward_trace("forward", [s.data.batch(0)], with_loss=False)
    if name == "loss":
        return loc.forward_trace("loss", [s.data.batch(0)], with_loss=True)
    if name == "metric":
        steps = list(s.eval_steps())
        found = loc.forward_trace("metric", s.data.batches(steps), with_loss=False, steps=steps)
        return found or Finding("metric", "metric", None, None,
                                "model outputs agree on every evaluation batch: the metric computation differs")
    if name == "lr":
        bad = check.failing[0] if check.failing else None
        step = int(bad.key.split("_")[1]) if bad and bad.key.startswith("step_") else None
        return Finding("lr", "lr", None, step, f"the learning rate schedules differ first at step {step}"
                       + (f": {bad.reason}" if bad else ""))
    if name == "backward":
        return loc.train_trace("backward", cfg.train.mode, min(cfg.train.iters, MAX_TRACE_STEPS))
    if name == "train":
        found = loc.train_trace("train", "train", min(cfg.train.train_iters, TRAIN_TRACE_STEPS))
        if found is None:
            loc.outcome.notes.append(
                f"no step of the first {min(cfg.train.train_iters, TRAIN_TRACE_STEPS)} diverges when both start it "
                "from the same weights: the difference builds up over the run (or arises later)")
        return found
    return None


def _everything(loc: Locator) -> Finding | None:
    cfg = loc.cfg
    if {"forward", "loss", "metric"} & set(cfg.checks):
        found = loc.forward_trace("forward", [loc.s.data.batch(0)], with_loss="loss" in cfg.checks)
        if found:
            return found
    if "train" in cfg.checks:
        return loc.train_trace("train", "train", min(cfg.train.iters, MAX_TRACE_STEPS))
    if "backward" in cfg.checks:
        return loc.train_trace("backward", cfg.train.mode, min(cfg.train.iters, MAX_TRACE_STEPS))
    return None


def apply(outcome: Outcome, report) -> None:
    """Put what was found into the report. A divergence that no check saw (with --locate: BatchNorm
    statistics after train-mode steps) fails the check it belongs to: never an aligned verdict
    beside a named divergence."""
    report.notes.extend(outcome.notes)
    found = outcome.finding
    if found is None:
        return
    if report.aligned:
        check = next((c for c in report.checks if c.name == found.check), report.checks[-1])
        check.keys.append(KeyResult(key=f"locate:{found.where}:{found.layer or ''}", passed=False,
                                    reason=found.detail))
    report.first_divergence = found.divergence()
