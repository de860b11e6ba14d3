"""Which way each square 2-D weight goes, measured on the traced forward rather than guessed from
its module's type: a square weight loads either way, and PaConvert's paddle.compat.nn.Linear,
PaddleFormers' lm_head or a layer that calls matmul(x, w, transpose_y=True) keep torch's [out, in]
where paddle.nn.Linear is [in, out]. A weight that is not square fits only one way (its shape
decides, harness/mapping/weights.py).

For each module pair both forwards call whose own tensors include square ones, the torch worker
records the module's input (its first call, in one eval-mode forward of batch 0) and its output
there with probe values in its tensors; the paddle worker calls its module on that input with the
same probe values laid out each candidate way (backends/layout.py). The one candidate that
reproduces torch's output is the layout. Probe values rather than the weights themselves, so that
a weight whose values cannot tell (zeros, ones, a symmetric matrix) is still measured. Only those
modules are hooked and only their input is kept: a few activations, not every module's.

Where no candidate or several reproduce it (the module itself differs, or ignores the weight), or
the module cannot be called on torch's input or answers with other tensors, or a side never calls
it, or it is torch's fused attention (whose call paddle's attention does not take), the type rule
decides and the weight map says why.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass

from harness.mapping.weights import LAYOUT_MEASURED, LAYOUT_RULE, Entry, Plan, module_of
from harness.workers.protocol import Op

REPRODUCES = 1e-3  # relative to torch's largest output value; float32 round-off is ~1e-6, a wrong layout ~1
MAX_SQUARE = 4  # square tensors measured together in one module: 2**4 candidate layouts at most


@dataclass
class Measurement:
    """One module pair to measure: its undecided square tensors and every tensor its paddle module holds."""

    torch: str
    paddle: str
    square: list  # Entry: the tensors whose layout is measured
    fills: dict  # paddle tensor name within the paddle module -> Entry that fills it

    @property
    def probed(self) -> list:
        return sorted({e.torch_name for e in self.fills.values()})

    def layouts(self) -> list:
        """Each candidate: the transpose of every square tensor, in the order of `square`."""
        return list(itertools.product((False, True), repeat=len(self.square)))

    def candidates(self) -> list:
        """What backends/layout.py replays: per candidate, each paddle tensor's source and layout."""
        out = []
        for flips in self.layouts():
            chosen = {e.paddle_name: flip for e, flip in zip(self.square, flips)}
            out.append({local: (e.torch_name, list(e.torch_shape), e.part, chosen.get(_source(e), e.transpose))
                        for local, e in self.fills.items()})
        return out


def _source(e: Entry) -> str:
    return e.alias_of or e.paddle_name


def _under(name: str, prefix: str) -> bool:
    return not prefix or name == prefix or name.startswith(prefix + ".")


def measure(session) -> None:
    """Settle session.plan's square weights: torch records the modules' inputs and outputs, paddle
    replays them in each candidate layout."""
    todo = measurements(session.plan)
    if not todo:
        return
    session.progress(f"measuring the layout of square weights in {len(todo)} module(s)")
    recorded = session.one("torch", Op.RECORD_PROBES, batch=session.data.batch(0),
                           modules={m.torch: m.probed for m in todo})
    asks = {m.paddle: {**recorded[m.torch], "candidates": m.candidates()} for m in todo
            if "error" not in recorded[m.torch]}
    replies = session.one("paddle", Op.REPLAY_PROBES, modules=asks) if asks else {}
    settle(session.plan, todo, {m.paddle: replies.get(m.paddle, recorded[m.torch]) for m in todo})


def measurements(plan: Plan) -> list:
    """The module pairs whose square weights a forward can measure; the others' entries say why not."""
    calls = plan.calls or {}
    called = {side: set(c) if c is not None else None for side, c in calls.items()}
    out = []
    for pair in plan.modules:
        square = [e for e in plan.entries if not e.alias_of and e.square and module_of(e.torch_name) == pair.torch
                  and e.layout.startswith(LAYOUT_RULE)]
        if not square:
            continue
        why = _unmeasurable(pair, called, len(square))
        fills = {e.paddle_name[len(pair.paddle) + 1 if pair.paddle else 0:]: e
                 for e in plan.entries if _under(e.paddle_name, pair.paddle)}
        if why is None and any(not _under(e.torch_name, pair.torch) for e in fills.values()):
            why = "its paddle module holds tensors filled from outside the torch module"
        if why is None:
            out.append(Measurement(pair.torch, pair.paddle, square, fills))
        else:
            _decide(plan, square, f"{LAYOUT_RULE} ({why})")
    return out


def _unmeasurable(pair, called: dict, count: int) -> str | None:
    if pair.fused:  # torch's takes key_padding_mask, need_weights and returns its weights; paddle's does not
        return "torch's fused attention and paddle's are called differently"
    for side, name in (("torch", pair.torch), ("paddle", pair.paddle)):
        if called.get(side) is None:
            return f"no traced {side} forward"
        if name not in called[side]:
            return f"the {side} forward never calls '{name}'"
    return f"{count} square tensors in one module, more than {MAX_SQUARE} are not measured" if count > MAX_SQUARE else None


def settle(plan: Plan, todo: list, replies: dict) -> None:
    """replies: paddle module name -> {errors: per candidate} or {error: why not}, from the workers."""
    for m in todo:
        reply = replies.get(m.paddle) or {"error": "no reply"}
        if "error" in reply:
            _decide(plan, m.square, f"{LAYOUT_RULE} (not measured: {reply['error']})")
            continue
        errors = reply["errors"]
        fits = [i for i, err in enumerate(errors) if err <= REPRODUCES]
        if len(fits) == 1:
            best = m.layouts()[fits[0]]
            for j, e in enumerate(m.square):
                other = min(err for i, err in enumerate(errors) if m.layouts()[i][j] != best[j])
                _decide(plan, [e], f"{LAYOUT_MEASURED} ({_way(best[j])} reproduces torch's output ({errors[fits[0]]:.1e}), "
                                   f"{_way(not best[j])} does not ({other:.2g}))", transpose=best[j])
        elif fits:
            _decide(plan, m.square, f"{LAYOUT_RULE} (every layout reproduces torch's output: the module does not "
                                    "depend on these values)")
        else:
            _decide(plan, m.square, f"{LAYOUT_RULE} (no layout reproduces torch's output, the closest is off by "
                                    f"{min(errors):.2g}: the module itself differs)")


def _way(transpose: bool) -> str:
    return "transposed" if transpose else "as is"


def _decide(plan: Plan, entries: list, layout: str, transpose: bool | None = None) -> None:
    """The entries (and the paddle aliases of their tensors) with their layout decided."""
    names = {e.paddle_name for e in entries}
    for i, e in enumerate(plan.entries):
        if _source(e) in names:
            plan.entries[i] = dataclasses.replace(e, layout=layout,
                                                  transpose=e.transpose if transpose is None else transpose)
