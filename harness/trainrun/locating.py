"""Where a training run's two sides part. From the last evaluation at which every curve was inside the
band (its kept states; the initial weights before the first), the steps since are re-run with
hooks on every module: each side loads its kept file (weights, optimizer and schedule:
backends/trace.py), paddle takes torch's weights before every step, dropout draws the masks the
run drew, and the judges of harness/locate/ name the first module, gradient, optimizer update or
BatchNorm buffer that differs within a step. In float64 where both models build in it, where
round-off is 2^29 smaller than a real difference; float32 otherwise, said in a note. A learning
rate that differs needs no trace: the step it parts at is the place."""

from __future__ import annotations

from harness.checks.datadiff import judge_field
from harness.errors import WorkerError
from harness.locate.driver import Context, Locator
from harness.locate.leaves import Finding, Outcome
from harness.trainrun.plan import ORDERED
from harness.workers.protocol import SIDES, Op, Request

MAX_STEPS = 50  # traced steps at most (each ships every activation home)


class RunLocator(Locator):
    def trace_from(self, batches: list, *, start: int, total: int, kept: dict | None, masks: dict) -> Finding | None:
        begun = self.ctx.call({side: Request(Op.TRACE_BEGIN, {"mode": "train", "total_steps": total,
                                                              "kept": (kept or {}).get(side), "masks": masks[side]})
                               for side in SIDES})
        before = {"torch": begun["torch"], "paddle": {"state": None}}  # paddle takes torch's weights each step
        for k, batch in enumerate(batches):
            step = start + k
            for side in SIDES:
                self.ctx.steps(side, "locating (train)", k, len(batches))
            recs = self.step(batch, backward=True, update=True, with_loss=True, sync=before["torch"]["state"])
            found = (self.forward.judge("train", recs, before, step, True)
                     or self.gradients.judge("train", recs, step)
                     or self.updates.update("train", recs, before["torch"], step)
                     or self.updates.buffers("train", recs, before["torch"], step))
            if found:
                return found
            before = {"torch": {"state": recs["torch"]["state"]}, "paddle": {"state": None}}
        return None


def locate_run(run, *, since: int | None = None, steps: int = MAX_STEPS) -> Outcome:
    """What the run's first divergence is, as localization's Outcome (harness/locate/driver.py): at
    most `steps` steps traced from evaluation `since` (default: the last agreeing one; 0: the start)."""
    outcome = Outcome()
    if run.lr_gap is not None:
        t, p = run.records.lr["torch"][run.lr_gap], run.records.lr["paddle"][run.lr_gap]
        outcome.finding = Finding("train", "lr", None, run.lr_gap,
                                  f"the learning rate schedules part at step {run.lr_gap} of the training run: torch "
                                  f"{t:.6g}, paddle {p:.6g} (warmup, decay length or the schedule itself differs)")
        return outcome
    agreed = run.patience.agreed if since is None else since
    start = next((e["step"] for e in run.records.evals if e["index"] == agreed), 0)
    end = run.stop["step"] if run.stop else run.records.steps
    batches = []
    try:
        batches = run.feeder.traced(start, max(1, min(end - start, steps)))
        outcome.finding = _batches_differ(run, start, batches)
        if outcome.finding is not None:
            return outcome
        precision = _wide(run.session, outcome)
        try:
            outcome.finding = _trace(run, batches, start, run.keeper.kept.get(agreed), outcome)
        finally:
            if precision != "float32":
                run.session.use_precision("float32")
    except WorkerError as exc:
        outcome.failed = f"localization stopped: {exc}"
    except Exception as exc:  # noqa: BLE001 - a bug of ours must not cost the user the run's verdict
        outcome.failed = f"localization failed (internal error, please report it): {type(exc).__name__}: {exc}"
    if outcome.failed:
        outcome.notes.append(outcome.failed)
    elif outcome.finding is None:
        outcome.notes.append(
            f"no step of the {len(batches)} re-run from evaluation {agreed or 0} "
            f"(step {start}) diverges when both sides start it from the same state: the difference builds up over "
            "the run (or arises later)")
    return outcome


def _batches_differ(run, start: int, batches: list) -> Finding | None:
    """Where each side collates its own items (`ordered`), paddle's batches of the traced steps
    against torch's, which the trace gives both sides: a pipeline that differs (a tokenizer, a
    transform) parts the curves while every step agrees on the same batch."""
    if run.plan.mode != ORDERED:
        return None
    epoch, offset = run.plan.epoch_of(start)
    own = run.session.one("paddle", Op.DATA_BATCHES, split="train",
                          indices=run.feeder.order(epoch)[offset:offset + len(batches)])["batches"]
    for k, (a, b) in enumerate(zip(batches, own)):
        for name in list(a) + [n for n in b if n not in a]:
            where = f"train.batch_{offset + k}.{name}"
            key = judge_field(where, a.get(name), b.get(name), run.cfg.tolerance.for_key("data", where))
            if not key.passed:
                return Finding("train", "data", name, start + k,
                               f"the two sides' batches of step {start + k} differ, each collated by its own pipeline "
                               f"from the same items (epoch {epoch}, batch {offset + k}): {name}: {key.reason} "
                               "(the data check, Step 2, compares the pipelines item by item)")
    return None


def _wide(session, outcome: Outcome) -> str:
    """The workers rebuilt in float64 where they can, else left in float32 (a note says so)."""
    if not session.options.arbitrate:
        outcome.notes.append("localization of the training run in float32 (--float32-only)")
        return "float32"
    try:
        session.use_precision("float64")
        return "float64"
    except WorkerError as exc:
        session.restart()
        outcome.notes.append(f"localization of the training run in float32: float64 could not run ({exc})")
        return "float32"


def _trace(run, batches: list, start: int, kept: dict | None, outcome: Outcome) -> Finding | None:
    session = run.session
    steps = getattr(session.progress, "steps", None) or (lambda worker, label, done, total: None)
    ctx = Context(cfg=session.cfg, call=session.call, batch=lambda step: batches[step - start], infos=session.infos,
                  plan=session.plan, to_paddle=session.to_paddle, adaptive=session.adaptive(),
                  dropout=session.dropout(), steps=steps)
    locator = RunLocator(ctx)
    total = run.cfg.lr_scheduler.total_steps or run.plan.total
    masks = run.sites()
    if run.unshared:  # a kernel draws masks of its own: the traced steps drop nothing, as in the checks
        masks = dict.fromkeys(SIDES)
        outcome.notes.append("dropout at p 0 in the re-run steps: a kernel of the model draws its own masks, which "
                             "cannot be shared")
    found = locator.trace_from(batches, start=start, total=total, kept=kept, masks=masks)
    locator.summarize()
    outcome.notes += locator.outcome.notes
    return found
