"""Checks of what the model computes without training: forward outputs, the metric, the loss and
the learning-rate schedule (the guide's steps 1 to 3 and the scheduler part of step 4)."""

from __future__ import annotations

from harness.checks.common import check, record
from harness.config.optim_table import MAX_LR_STEPS, PLATEAU_STEPS
from harness.verdict import keys
from harness.verdict.diff import CheckResult
from harness.verdict.keys import Key, Kind
from harness.workers.protocol import Op


@check
def forward(session) -> CheckResult:
    out = yield session.for_both(Op.FORWARD, batch=session.data.batch(0))
    return record(session, "forward", keys.values(out["torch"]), keys.values(out["paddle"]))


@check
def loss(session) -> CheckResult:
    out = yield session.for_both(Op.LOSS, batch=session.data.batch(0))
    return record(session, "loss", keys.values(out["torch"]), keys.values(out["paddle"]))


@check
def metric(session, *, overrides: dict | None = None) -> CheckResult:
    """The metric over the evaluation batches: eval_batches of make_batch, or the whole eval split of
    the [data] source's own data, streamed to both sides in chunks."""
    total = session.data.eval_count()
    chunks = iter(session.data.evaluation())
    chunk, first, seen = next(chunks), True, 0
    while True:
        following = next(chunks, None)
        out = yield session.for_both(Op.METRIC, batches=chunk, overrides=overrides, begin=first,
                                     end=following is None, total=total)
        seen += len(chunk)
        if following is None:
            break
        chunk, first = following, False
    result = record(session, "metric", keys.values(out["torch"]), keys.values(out["paddle"]))
    if session.data.source != "make_batch":
        result.notes.append(session.data.described(seen))
    return result


@check
def lr(session, *, overrides: dict | None = None) -> CheckResult:
    """The schedule built for the run's total steps, read past every step size, milestone and
    warmup it has (each worker knows its own scheduler; when one reaches further, both are read
    that far), at most MAX_LR_STEPS steps."""
    total = session.cfg.total_steps
    request = {"total_steps": total, "overrides": overrides,
               "metrics": plateau_metrics(min(max(total, PLATEAU_STEPS), MAX_LR_STEPS))}
    out = yield session.for_both(Op.LR_SCHEDULE, **request)
    lengths = {len(out[side]["lr"]) for side in out}
    if len(lengths) > 1:
        out = yield session.for_both(Op.LR_SCHEDULE, **request, steps=max(lengths))
    name = "pair" if session.custom_optimizer else \
        (overrides or {}).get("lr_scheduler", {}).get("name", session.cfg.lr_scheduler.name)
    per_step = {side: {Key(Kind.LR, name, step=i): v for i, v in enumerate(out[side]["lr"])} for side in out}
    result = record(session, "lr", per_step["torch"], per_step["paddle"])
    if total > MAX_LR_STEPS:
        result.notes.append(f"the schedule's first {MAX_LR_STEPS} of {total} steps were read")
    return result


def plateau_metrics(steps: int) -> list:
    """A fixed loss sequence for the lr check: improving, then flat with small noise below any
    threshold, then improving again, so a plateau schedule must decide to drop and to wait."""
    return [1.0 / (1 + i) if i < 2 or i >= 12 else 0.5 + 1e-6 * (i % 2) for i in range(steps)]
