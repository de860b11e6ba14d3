"""Driving localization: re-run the failing check's steps in both workers with hooks on every
module, hand each traced step to the judges (forward, gradients, update, buffers) and keep the
first finding.

Each step of a traced training run starts from equal weights (paddle gets torch's state before
every step), so each difference found is made *in* that step. Dropout modules are switched to
eval mode in traced train-mode steps (each framework draws its own masks), and the report says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from harness.checks.common import decay_by_torch_name, decay_difference
from harness.config.schema import RunConfig
from harness.errors import WorkerError
from harness.locate.forward import ForwardJudge
from harness.locate.gradients import GradientJudge
from harness.locate.leaves import Finding, Outcome, display
from harness.locate.matching import Match, with_entry_order
from harness.locate.updates import UpdateJudge
from harness.verdict.diff import CheckResult, KeyResult
from harness.verdict.keys import Key, Kind
from harness.workers.protocol import SIDES, Op, Request

# Traced steps for a failing train check (each step ships every activation home).
TRAIN_TRACE_STEPS = 8
MAX_TRACE_STEPS = 50


@dataclass(frozen=True)
class Context:
    """What localization needs of a run, and nothing more."""

    cfg: RunConfig
    call: Callable[[dict], dict]  # worker name -> Request, answered all at once
    batch: Callable[[int], dict]  # the run's batch of a step
    infos: dict  # per side, what setup reported (module tables)
    plan: object  # the weight plan (harness/mapping/weights.py), None with the pair's own torch_to_paddle
    to_paddle: Callable[[dict], dict]  # torch state -> the arguments that load it into paddle
    adaptive: bool  # an Adam-type optimizer
    dropout: dict  # per side, the dropout modules
    steps: Callable[[str, str, int, int], None] = lambda worker, label, done, total: None  # progress display


class Locator:
    def __init__(self, ctx: Context):
        self.ctx, self.cfg, self.tol = ctx, ctx.cfg, ctx.cfg.tolerance
        self.match: Match | None = None
        self.outcome = Outcome()
        self.forward = self.gradients = self.updates = None  # the judges, once the modules are matched

    def summarize(self) -> None:
        if self.updates is None:
            return
        if self.updates.unconstrained:
            names = sorted(self.updates.unconstrained)
            self.outcome.notes.append(
                f"{len(names)} parameter(s) whose gradient is rounding noise (wholly or in part), and so their update, moved "
                f"differently and were not judged there: {', '.join(names[:6])}"
                + (" ..." if len(names) > 6 else "") + " (e.g. a bias right before BatchNorm)")
        if self.updates.variance_gap:
            names = sorted(self.updates.variance_gap)
            self.outcome.notes.append(
                f"{', '.join(names[:4])}{' ...' if len(names) > 4 else ''}: within the gap of torch's unbiased vs "
                "paddle's biased batch variance (at most running_var / N per update), not judged a divergence")

    # ------------------------------------------------------------ driving the workers
    def begin(self, mode: str, total_steps: int) -> dict:
        dropout = self.ctx.dropout
        if mode == "train" and (dropout["torch"] or dropout["paddle"]):
            names = dropout["torch"] or dropout["paddle"]
            self.outcome.notes.append(
                f"dropout ({', '.join(map(display, names[:3]))}{' ...' if len(names) > 3 else ''}, and functional "
                "dropout) was at p 0 in the traced train-mode steps, as in the checks: each framework draws its own masks")
        return self.ctx.call({side: Request(Op.TRACE_BEGIN, {"mode": mode, "total_steps": total_steps})
                              for side in SIDES})

    def step(self, batch: dict, *, backward: bool, update: bool, with_loss: bool, sync: dict | None) -> dict:
        kwargs = {"batch": batch, "backward": backward, "update": update, "with_loss": with_loss}
        paddle_kwargs = dict(kwargs)
        if sync is not None:  # through the conversion the run itself used
            mapped = self.ctx.to_paddle(sync)
            paddle_kwargs.update(sync=mapped["state"], raw=mapped["raw"])
        # traced tensors stay shared-memory handles, each read when compared: the coordinator never
        # holds a step's activations at once
        recs = self.ctx.call({"torch": Request(Op.TRACE_STEP, kwargs), "paddle": Request(Op.TRACE_STEP, paddle_kwargs)})
        for rec in recs.values():
            with_entry_order(rec)
        if self.match is None:
            infos = self.ctx.infos
            self.match = Match(infos["torch"]["modules"], infos["paddle"]["modules"], self.ctx.plan,
                               calls={side: infos[side].get("calls") for side in SIDES})
            self.match.complete(recs["torch"]["calls"], recs["paddle"]["calls"])
            self.forward = ForwardJudge(self.match, self.tol)
            self.gradients = GradientJudge(self.match, self.tol)
            self.updates = UpdateJudge(self.match, self.tol, self.ctx.adaptive)
        return recs

    # ------------------------------------------------------------ entry points
    def forward_trace(self, check: str, batches: list, *, with_loss: bool, steps: list | None = None) -> Finding | None:
        begin = self.begin("eval", self.cfg.total_steps)
        for i, batch in enumerate(batches):
            recs = self.step(batch, backward=False, update=False, with_loss=with_loss, sync=None)
            found = self.forward.judge(check, recs, begin, steps[i] if steps else i, with_loss)
            if found:
                return found
        return None

    def train_trace(self, check: str, mode: str, steps: int) -> Finding | None:
        total = self.cfg.total_steps if check != "train" else (self.cfg.lr_scheduler.total_steps
                                                               or self.cfg.train.train_iters)
        before = self.begin(mode, total)
        decay = decay_difference(decay_by_torch_name(self.ctx.plan, {side: before[side].get("decay") for side in SIDES}))
        for k in range(steps):
            for side in SIDES:  # each traced step is a round trip of its own: counted here
                self.ctx.steps(side, f"locating ({check})", k, steps)
            sync = before["torch"]["state"] if k > 0 else None
            recs = self.step(self.ctx.batch(k), backward=True, update=True, with_loss=True, sync=sync)
            found = (self.forward.judge(check, recs, before, k, True)
                     or self.gradients.judge(check, recs, k)
                     or self.updates.applied(check, recs, k)
                     or self.updates.update(check, recs, before["torch"], k, decay)
                     or (self.updates.buffers(check, recs, before["torch"], k) if mode == "train" else None))
            if found:
                return found
            # paddle starts the next step from torch's weights: no mapping left to judge there
            before = {"torch": {"state": recs["torch"]["state"]}, "paddle": {"state": None}}
        return None


# ---------------------------------------------------------------------- what to trace
def locate(ctx: Context, checks: list, *, always: bool = False) -> Outcome:
    """Trace the first failing check (or, with always and nothing failing, a forward pass and the
    training steps) and return what was found. Never raises for a localization problem: a worker
    failure while tracing becomes a note, the checks' verdicts stand."""
    loc = Locator(ctx)
    failing = next((c for c in checks if not c.passed), None)
    try:
        if failing is not None:
            loc.outcome.finding = _for_check(loc, failing)
        elif always:
            loc.outcome.finding = _everything(loc)
    except WorkerError as exc:
        loc.outcome.notes.append(f"localization stopped: {exc}")
    except Exception as exc:  # noqa: BLE001 - a bug of ours must not cost the user the checks' verdicts
        loc.outcome.finding = None
        loc.outcome.notes.append(f"localization failed (internal error, please report it): {type(exc).__name__}: {exc}")
    if failing is not None and loc.outcome.finding is None and loc.match is not None:
        loc.outcome.notes += loc.match.notes  # modules nothing compared may hide the place
    loc.summarize()
    return loc.outcome


def _for_check(loc: Locator, check: CheckResult) -> Finding | None:
    ctx, cfg, name = loc.ctx, loc.cfg, check.name
    if check.failing and all(k.id.kind is Kind.DROPOUT for k in check.failing):
        key = check.failing[0]  # configuration, compared as such: no step needs tracing to name it
        return Finding(name, "dropout", key.id.name, None, f"{key.key}: {key.reason}")
    if name in ("forward", "loss"):
        return loc.forward_trace(name, [ctx.batch(0)], with_loss=name == "loss")
    if name == "metric":
        steps = list(range(cfg.data.eval_batches))
        found = loc.forward_trace("metric", [ctx.batch(s) for s in steps], with_loss=False, steps=steps)
        return found or Finding("metric", "metric", None, None,
                                "model outputs agree on every evaluation batch: the metric computation differs")
    if name == "lr":
        bad = check.failing[0] if check.failing else None
        step = bad.id.step if bad else None
        return Finding("lr", "lr", None, step, f"the learning rate schedules differ first at step {step}"
                       + (f": {bad.reason}" if bad else ""))
    if name == "backward":
        return loc.train_trace("backward", cfg.train.mode, min(cfg.train.iters, MAX_TRACE_STEPS))
    if name == "train":
        steps = min(cfg.train.train_iters, TRAIN_TRACE_STEPS)
        found = loc.train_trace("train", "train", steps)
        if found is None:
            loc.outcome.notes.append(
                f"no step of the first {steps} diverges when both start it from the same weights: the difference "
                "builds up over the run (or arises later)")
        return found
    return None


def _everything(loc: Locator) -> Finding | None:
    cfg = loc.cfg
    if {"forward", "loss", "metric"} & set(cfg.checks):
        found = loc.forward_trace("forward", [loc.ctx.batch(0)], with_loss="loss" in cfg.checks)
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
    found = outcome.finding
    if found is None and report.aligned:
        return  # its notes explain what it did not blame; with nothing to blame the checks' own notes stand
    report.notes.extend(outcome.notes)
    if found is None:
        return
    if report.aligned:
        check = next((c for c in report.checks if c.name == found.check), report.checks[-1])
        check.keys.append(KeyResult(id=Key(Kind.LOCATE, f"{found.where}:{found.layer or ''}"), passed=False,
                                    reason=found.detail))
    report.first_divergence = found.divergence()
