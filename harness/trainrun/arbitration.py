"""Telling round-off from a difference in a training run, where the curves or the final metric part.

The curves (curves): when they stay outside the band for [train] patience evaluations, localization
re-runs the steps since the last agreeing evaluation (harness/trainrun/locating.py). A step that
diverges is the run's divergence. In the paired regime, every traced step agreeing means the gap
is round-off that training amplified: the curves are judged by the independent band from there.

The first steps (spot_check): a mistake too small to part the curves never shows in them: under the
paired band's 0.1 % (Llama's rope_theta at 500,000 on paddle's side against 10,000, 40 steps of
HF transformers vs PaddleFormers: the train losses 1.8e-5 apart), or, where the curves are two
samples of one random process, under their chance spread (BatchNorm's momentum, weight decay on
the norms: examples/digits in paddle's own order ended a 3-epoch run inside the band). So at the
first evaluation of every run the first SPOT_STEPS steps are re-run from the initial weights on
both sides, on torch's batches, with hooks on every module, as localization does (where each side
collates its own items, its batches are compared first): each step must agree, or it is the run's
divergence.

The final metric (final_metric): when a run whose curves never parted ends with metrics further
apart than [tolerance] train (a prediction or two flipped by round-off), both sides train again in
float64 from the last agreeing evaluation, from torch's weights there, with the same batches and
dropout masks, and are evaluated at the end: the float64 metrics decide, as float64 arbitration
decides every other check (harness/verdict/rules.py: float64_arbitration).
"""

from __future__ import annotations

from harness.errors import WorkerError
from harness.safety.safeload import load_npy_dict
from harness.trainrun.locating import locate_run
from harness.verdict import band
from harness.workers.protocol import SIDES, Op, Request


def curves(run, index: int) -> bool:
    """The curves stayed outside the band for [train] patience evaluations: localization decides.
    A step that diverges is the run's divergence (it stops, unless --no-early-stop). In the paired
    regime, every traced step agreeing in float64 means the gap is round-off that training
    amplified: those evaluations are marked so, and the curves are judged by the independent band
    from here. In the independent regime the curves are apart beyond chance all the same. True:
    the workers were rebuilt, so the run continues from this evaluation's kept state."""
    streak, agreed = list(run.patience.streak), run.patience.agreed
    start = next((e["step"] for e in run.records.evals if e["index"] == agreed), 0)
    step = run.records.evals[-1]["step"]
    run.session.progress(f"train: the curves stayed outside the band at evaluations {', '.join(map(str, streak))}: "
                         f"re-running steps {start}.. with hooks on every module to tell a difference from round-off")
    outcome = locate_run(run)
    if outcome.finding is None and not outcome.failed and run.regime == band.PAIRED:
        for e in run.records.evals:
            if e["index"] in streak:
                e["arbitrated"] = "round-off"
        run.notes.append(f"the curves left the paired band at evaluations {', '.join(map(str, streak))}; the steps "
                         f"since evaluation {agreed or 0} (step {start}) re-run from the same state on both sides agreed "
                         f"step by step{' in float64' if run.session.options.arbitrate else ''}: round-off, amplified "
                         f"by training; from evaluation {index} (step {step}) on, the curves are judged by the "
                         "independent band")
        run.regime = band.INDEPENDENT
        run.patience.streak, run.patience.agreed = [], index
        run.keeper.keep(index, index)
        run.save()
        return True
    run.located = outcome
    if run.session.options.early_stop:
        run.stop = {"why": "band", "step": step, "evaluation": index}
    return True


SPOT_STEPS = 10  # the steps the spot check traces (every mistake of examples/digits shows by step 1)


def spot_check(run, index: int) -> None:
    """The first steps of the run re-run from the same state on both sides (see above). The workers
    may have been rebuilt: a run that goes on continues from this evaluation's kept state."""
    run.session.progress("train: the spot check: the first steps again from the initial weights on torch's batches "
                         "on both sides, with hooks on every module (a mistake too small for the curves shows there)")
    outcome = locate_run(run, since=0, steps=SPOT_STEPS)
    run.spot_checked = True
    if outcome.failed:
        run.notes.append(f"the spot check did not finish ({outcome.failed}): the curves alone judge this run")
        return
    if outcome.finding is None:
        traced = min(SPOT_STEPS, run.records.evals[0]["step"])
        run.notes.append(f"the first {traced} steps, re-run from the initial weights on torch's batches on both sides, "
                         f"agreed step by step{' in float64' if run.session.options.arbitrate else ''} (forward, loss, "
                         "gradients, updates, buffers): the spot check, for what is too small to part the curves")
        return
    run.located = outcome
    if run.session.options.early_stop:
        run.stop = {"why": "spot_check", "step": run.records.evals[-1]["step"], "evaluation": index}


def final_metric(run) -> dict | None:
    """Each side's metric after training again in float64 from the last agreeing evaluation (see
    above); None where float64 could not run (a note says why)."""
    session, agreed = run.session, run.patience.agreed
    start = next((e["step"] for e in run.records.evals if e["index"] == agreed), 0)
    kept = run.keeper.kept.get(agreed) if agreed else None
    session.progress(f"train: the final metrics differ by more than [tolerance] train: training steps {start}.."
                     f"{run.plan.total} again in float64 from the same state on both sides")
    try:
        session.use_precision("float64")
        try:
            return _float64_run(run, start, kept)
        finally:
            session.use_precision("float32")
    except WorkerError as exc:
        run.notes.append(f"the final metric could not be re-run in float64 ({exc}): float32's stands")
        session.restart()
        return None


def _float64_run(run, start: int, kept: dict | None) -> dict:
    session = run.session
    weights = session.to_paddle({k: v for k, v in load_npy_dict(kept["torch"])["model"].items()}) if kept else None
    n, parallel = session.layout.nprocs, session.layout.world > 1
    total = run.cfg.lr_scheduler.total_steps or run.plan.total
    sites = run.sites()
    requests = {name: Request(Op.RUN_BEGIN, {"total_steps": total, "kept": kept[side] if kept else None,
                                             "masks": sites[side], "parallel": parallel, "rank": r, "nprocs": n,
                                             "moments": False, "weights": weights if side == "paddle" else None})
                for side in SIDES for r, name in enumerate(session.ranks[side])}
    session.submit(requests, label="train (float64)").wait()
    for first, count in run.plan.chunks(start):
        session.submit(run.feeder.chunk(first, count), label="train (float64)").wait()
    out = None
    for part in run.feeder.evaluations():
        out = session.submit(part, label="train (float64)").wait()
    return {side: {k: float(v) for k, v in out[side]["metric"].items()} for side in SIDES}
