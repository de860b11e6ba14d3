"""Judging one traced forward pass: the first module call (in the order calls finish, children
before parents) whose output differs is the place. Its inputs agree and it has no differing
child: its own computation or its parameters differ. Its children all agree but its output
differs: a functional operation inside it. Its inputs already differ: the module whose forward
made them is named (harness/locate/upstream.py): one paddle has no counterpart of, functional
code in a module's forward, or modules wired differently. The model's own inputs differ: the
pair feeds the two models differently."""

from __future__ import annotations

import numpy as np

from harness.locate.leaves import AROUND, Finding, compare_leaves, compare_loose, display, shape_of, summary, worst
from harness.locate.upstream import Upstream
from harness.mapping import weights


class ForwardJudge:
    def __init__(self, match, tol):
        self.match, self.tol = match, tol
        self._paddle_as_torch: dict | None = None  # paddle's initial state under torch names

    def judge(self, check: str, recs: dict, begin: dict, step: int, with_loss: bool) -> Finding | None:
        tr, pr = recs["torch"], recs["paddle"]
        out_diffs = compare_leaves(tr["output"], pr["output"], self.tol.forward)
        loss_diff = None
        if with_loss and "loss" in tr and "loss" in pr:
            loss_diff = compare_loose("loss", tr["loss"], pr["loss"], self.tol.loss)
        output_differs = any(d.differs for d in out_diffs) or len(tr["output"]) != len(pr["output"])
        if not output_differs and not (loss_diff and loss_diff.differs):
            return None  # what the check judges agrees: an intermediate gap here is no divergence
        rows = self.rows(tr, pr)
        model = next((r for r in rows if r["call"]["key"] == "#0"), None)
        if model is not None and model["in_differs"]:
            return self._inputs(check, model, rows, step)
        first = next((r for r in rows if r["out_differs"]), None)
        if first is None:
            if output_differs:
                return Finding(check, "after_model", None, step,
                               "every module's output agrees, the outputs returned differ: the difference is made "
                               "after the model, in the pair's forward_torch/forward_paddle or the output's structure "
                               f"({summary(out_diffs)})", around=self._around(rows, len(rows) - 1))
            return Finding(check, "loss", None, step,
                           f"the model outputs agree, the losses differ ({summary([loss_diff])}): the loss function "
                           "differs (check reduction, class axis, label smoothing, ignore_index)")
        return self._place(check, rows, rows.index(first), begin, step, recs)

    def _place(self, check: str, rows: list, index: int, begin: dict, step: int, recs: dict) -> Finding:
        """The first differing call: what made its differing input, its parameters, a functional op
        inside it, or its own computation."""
        first = rows[index]
        call = first["call"]
        if first["in_differs"]:
            before = self._previous_sibling(rows, index, call["parent"])
            where, layer, paddle_layer, detail = Upstream(self.match, recs, rows).explain(
                first, before and before["call"])
            key = next((c["key"] for c in recs["torch"]["calls"] if c["name"] == layer), None)
        else:
            layer, paddle_layer, key = call["name"], first["paddle"]["name"], call["key"]
            where, detail = self._own(rows, index, begin)
        if step and check in ("backward", "train"):
            detail += f" (step {step}, both sides starting it from torch's weights)"
        path = self._path(rows, key, recs["torch"]["calls"])
        return Finding(check, where, layer, step, detail, paddle_layer, path, self._around(rows, index))

    def _inputs(self, check: str, model: dict, rows: list, step: int) -> Finding:
        """The models are fed different inputs: the batch is one, so the pair's forward_* passes it on differently."""
        bad = [d for d in model["ins"] if d.differs]
        what = "; ".join(f"{_argument(d.key)}: {summary([d])}" for d in bad[:3])
        return Finding(check, "inputs", "", step,
                       f"the two models are given different inputs ({what}) before any module runs: both sides get "
                       "the same batch, so the pair's forward_torch / forward_paddle (or [data] inputs) passes it on "
                       "differently", model["paddle"]["name"], self._path(rows, "#0", []),
                       self._around(rows, rows.index(model)))

    def _own(self, rows: list, index: int, begin: dict) -> tuple:
        """The call's inputs agree: (where, detail) for its parameters, its children or itself."""
        first = rows[index]
        call, layer, paddle_layer = first["call"], first["call"]["name"], first["paddle"]["name"]
        children = [r for r in rows[:index] if r["call"]["parent"] == call["key"]]
        params = self.param_diffs(layer, begin)
        bad = [p for p in params if p["differs"]]
        if bad:
            return "parameter", (f"{display(layer)} ({call['type']}): its parameters differ after mapping: "
                                 + "; ".join(f"{p['name']}: {p['why']}" for p in bad[:4]))
        if children:
            return "inside", (f"the difference arises inside {display(layer)} ({call['type']}): its inputs and the "
                              f"outputs of its {len(children)} submodule calls agree, its output differs "
                              f"({summary(first['outs'])}): a functional operation in its forward differs")
        types = call["type"] if call["type"] == first["paddle"]["type"] else \
            f"torch {call['type']} vs paddle {first['paddle']['type']}"
        return "forward", (f"{display(layer)} ({types}) computes differently: inputs agree"
                           + (", parameters agree" if params else "")
                           + f", output differs ({summary(first['outs'])})"
                           + (f" [paddle: {display(paddle_layer)}]" if paddle_layer != layer else ""))

    def rows(self, tr: dict, pr: dict) -> list:
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
            tname = weights.full_name(module, local)
            if tname not in t_state or tname not in converted:
                continue
            d = compare_loose(tname, t_state[tname], converted[tname], self.tol.forward)
            why = d.why
            if d.differs and self._untransposed(tname, t_state, p_state):
                why = ("paddle holds torch's weight untransposed (torch Linear [out, in] must become paddle "
                       "[in, out]; a square weight loads either way)")
            out.append({"name": tname, "differs": d.differs, "why": why or summary([d])})
        return out

    def _untransposed(self, tname: str, t_state: dict, p_state: dict) -> bool:
        e = self.match.entry(tname)
        return (e is not None and e.transpose and not e.part and e.paddle_name in p_state
                and np.shape(p_state[e.paddle_name]) == np.shape(t_state[tname])
                and np.allclose(p_state[e.paddle_name], t_state[tname], rtol=0, atol=1e-7))

    # ------------------------------------------------------------ what the report shows
    @staticmethod
    def _previous_sibling(rows, index, parent_key):
        for r in reversed(rows[:index]):
            if r["call"]["parent"] == parent_key:
                return r
        return None

    @staticmethod
    def _path(rows, key, calls: list) -> list:
        """Root -> the call `key`, each with its output diff where it was compared."""
        by_key = {r["call"]["key"]: r for r in rows}
        traced = {c["key"]: c for c in calls}
        chain = []
        while key is not None and (key in by_key or key in traced):
            r = by_key.get(key)
            c = r["call"] if r else traced[key]
            chain.append({"module": display(c["name"]), "type": c["type"], "diff": worst(r["outs"]) if r else None,
                          "differs": r["out_differs"] if r else None})
            key = c["parent"]
        return list(reversed(chain))

    @staticmethod
    def _around(rows, index) -> list:
        table = []
        for r in rows[max(0, index - AROUND): index + AROUND + 1]:
            call_no = int(r["call"]["key"].rsplit("#", 1)[1])
            suffix = f" [call {call_no + 1}]" if call_no else ""
            table.append({"module": display(r["call"]["name"]) + suffix, "paddle": display(r["paddle"]["name"]),
                          "type": r["call"]["type"] if r["call"]["type"] == r["paddle"]["type"]
                          else f"{r['call']['type']} / {r['paddle']['type']}",
                          "in_shape": shape_of(r["call"]["inputs"]), "out_shape": shape_of(r["call"]["outputs"]),
                          "in_diff": worst(r["ins"]), "out_diff": worst(r["outs"]),
                          "status": ("HERE" if r is rows[index] else "DIFFERS") if r["out_differs"] else "agrees"})
        return table


def _argument(leaf: str) -> str:
    """A traced input leaf as the call took it: in.0.1 -> argument 1, in.1.input_ids -> input_ids."""
    _, group, *rest = leaf.split(".")
    if not rest:
        return leaf
    head = f"argument {rest[0]}" if group == "0" else rest[0]
    return head + "".join(f"[{r}]" for r in rest[1:])
