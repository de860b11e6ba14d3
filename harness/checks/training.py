"""Checks that train: backward (the guide's step 4: losses of every step, then the updated
parameters and the last gradients by torch name) and train (step 5: the loss curve, the trained
model's metric and BatchNorm running means)."""

from __future__ import annotations

import numpy as np

from harness.checks import parallel
from harness.checks.common import check, judge, judge_dropouts, judge_updates, save_tensors
from harness.errors import UsageError
from harness.report import plot
from harness.report.compare import load_side
from harness.verdict import keys
from harness.verdict.diff import CheckResult
from harness.verdict.keys import Key, Kind
from harness.workers.protocol import SIDES, Op


@check
def backward(session, *, overrides: dict | None = None, write: bool = True) -> CheckResult:
    if session.layout.world > 1:
        return (yield from parallel.backward.steps(session, overrides=overrides))
    cfg = session.cfg
    batches = session.data.batches(range(cfg.train.iters))
    out = yield session.for_both(Op.TRAIN, batches=batches, mode=cfg.train.mode, total_steps=cfg.total_steps,
                                 overrides=overrides)
    losses = {side: keys.losses(out[side]["loss"]) for side in SIDES}
    ref, other = dict(losses["torch"]), dict(losses["paddle"])  # judge_updates adds the param: and grad: keys
    result, params, grads = judge_updates(session, ref, other, out, overrides)
    if cfg.train.mode == "train":  # its steps ran with dropout off: the dropouts themselves are compared
        judge_dropouts(session, result, ref, other)
    short = session.data.short(len(batches), cfg.train.iters, "[train] iters")
    result.notes += [short] if short else []
    if write:
        for side in SIDES:
            session.writer.arrays(f"bp_align_{side}.npy", losses[side])  # the guide's file: losses only
        save_tensors(session, result, params=params, grads=grads)
        session.writer.log("bp_align_diff.log", result, ref, other)
    return result


@check
def train(session) -> CheckResult:
    """train_iters steps in train mode: loss curves and final metric within the relative train
    tolerance (0.15 %), BatchNorm running means, optionally the paddle metric against --benchmark."""
    cfg = session.cfg
    iters = cfg.train.train_iters
    batches = session.data.batches(range(iters))
    out = yield session.for_both(Op.TRAIN, batches=batches, mode="train",
                       total_steps=cfg.lr_scheduler.total_steps or iters,
                       eval_batches=session.data.heldout())  # never among the training batches
    sides = {side: {**keys.losses(out[side]["loss"]), **keys.named(Kind.METRIC, out[side]["metric"])} for side in SIDES}
    result = judge("train", sides["torch"], sides["paddle"], cfg.tolerance)
    # running means are judged in absolute terms, like parameters: a relative rule would call
    # float noise on a mean near 0 a divergence
    means = _running_means(session, out)
    result.keys += judge("train", means["torch"], means["paddle"], cfg.tolerance.backward).keys
    for side in SIDES:
        sides[side].update(means[side])
    if session.options.benchmark:
        result.keys += _against_benchmark(session.options.benchmark, out["paddle"]["metric"], cfg.tolerance.train)
    judge_dropouts(session, result, sides["torch"], sides["paddle"])
    short = session.data.short(len(batches), iters, "[train] train_iters")
    result.notes += [short] if short else []
    session.writer.check(result, sides["torch"], sides["paddle"])
    with session.writer.writing("train_curve.png") as path:
        note = plot.train_curve(path, result, sides["torch"], sides["paddle"], cfg.name)
    if note:
        result.notes.append(note)
    return result


def _running_means(session, out: dict) -> dict:
    """BatchNorm running means after training: train-mode losses never read them, so a momentum
    convention mix-up (paddle 0.9 = torch 0.1) shows only here or in the final metric. Running
    variances are left out: torch updates them with the unbiased batch variance, paddle with the
    biased one, a gap of up to 1/(N-1) in a correct port (`--locate` judges them with that gap)."""
    means = {side: {} for side in SIDES}
    naming = session.plan or session.identity  # the weight plan, or the pair's converter identified by value
    if naming is None:
        return means
    paddle_buffers = naming.paddle_to_torch_names(out["paddle"]["buffers"])
    for name, value in out["torch"]["buffers"].items():
        if name.endswith("running_mean") and name in paddle_buffers:
            means["torch"][Key(Kind.BUFFER, name)] = value
            means["paddle"][Key(Kind.BUFFER, name)] = paddle_buffers[name]
    return means


def _against_benchmark(path, paddle_metric: dict, tol) -> list:
    reference = load_side(path)
    shared = [k for k in reference if k in paddle_metric or k.removeprefix("metric_") in paddle_metric]
    if not shared:
        raise UsageError(f"{path}: no key matches the metric ({', '.join(paddle_metric)})")
    ref, port = {}, {}
    for key in shared:
        name = key.removeprefix("metric_")
        ref[Key(Kind.BENCHMARK, name)] = np.asarray(reference[key], np.float64).reshape(())
        port[Key(Kind.BENCHMARK, name)] = np.asarray(paddle_metric[name], np.float64)
    return judge("train", ref, port, tol).keys
