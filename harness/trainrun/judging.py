"""A training run's verdict and artifacts: the final metric within [tolerance] train (the guide's
0.15 %), each curve against its band (`band:<series>`, failing where it stayed outside for
[train] patience evaluations), the learning rate step by step (`band:lr`), the paddle metric
against --benchmark; train_align_{torch,paddle}.npy, train_align_diff.log, train_curve.png."""

from __future__ import annotations

import numpy as np

from harness.checks.common import judge
from harness.checks.training import _against_benchmark
from harness.report import runplot
from harness.verdict import band, rules
from harness.verdict.diff import CheckResult, KeyResult, fmt
from harness.verdict.keys import Key, Kind
from harness.workers.protocol import SIDES

MODES = {"given": "make_batch's batches, the same to both", "source": "the {source} side's batches, the same to both",
         "ordered": "each side's own items, in the order torch's loader draws (its index lists each epoch)",
         "own": "each side's own loader, in its own order"}


def partial(run) -> CheckResult:
    """The check as far as the run has come (the live report): its keys and account so far."""
    result = CheckResult("train", keys=_band_keys(run) + _lr_key(run), notes=list(run.notes))
    result.run = account(run)
    return result


def result(run) -> CheckResult:
    res = partial(run)
    metric = _final_metric_keys(run)
    res.keys = metric.keys + res.keys
    if metric.arbitration:
        res.arbitration = metric.arbitration
    found = run.located.finding if run.located is not None else None
    if found is not None and found.where != "lr":  # never aligned beside a named divergence (--no-early-stop)
        res.keys.append(KeyResult(id=Key(Kind.LOCATE, f"{found.where}:{found.layer or ''}"), passed=False,
                                  reason=found.detail))
    if run.session.options.benchmark and run.records.evals:
        res.keys += _against_benchmark(run.session.options.benchmark, run.records.evals[-1]["paddle"]["metric"],
                                       run.cfg.tolerance.train)
    res.notes = _notes(run) + res.notes
    return res


def _final_metric_keys(run) -> CheckResult:
    """The final metric within [tolerance] train, decided in float64 where the run trained again in it."""
    metric = judge("train", *final_metric(run), run.cfg.tolerance)
    if run.wide is not None and not metric.passed:
        wide = [{Key(Kind.METRIC, name): np.float64(v) for name, v in run.wide[side].items()} for side in SIDES]
        rules.arbitrate(metric, judge("train", *wide, run.cfg.tolerance))
    if (run.plan.regime == band.INDEPENDENT or run.unshared) and run.records.evals:
        last = {pt["series"]: pt for pt in run.records.evals[-1]["points"]}
        for key in metric.keys:
            band.within_chance(key, last.get(key.key))
    return metric


def final_metric_passes(run) -> bool:
    """Whether a run whose curves never parted has its final metrics within [tolerance] train."""
    return all(k.passed for k in _band_keys(run)) and judge("train", *final_metric(run), run.cfg.tolerance).passed


def final_metric(run) -> tuple:
    """The metric of the last evaluation on each side, keyed metric_<name> (the guide's final metric)."""
    last = run.records.evals[-1] if run.records.evals else None
    if last is None:
        return {}, {}
    return tuple({Key(Kind.METRIC, name): np.float64(value) for name, value in last[side]["metric"].items()}
                 for side in SIDES)


def _parted(evals: list, patience: int) -> set:
    """The evaluations inside a streak of at least `patience` with a curve outside its band."""
    parted, streak = set(), []
    for e in evals + [{"inside": True, "index": None}]:
        if e["inside"] or e.get("arbitrated"):  # outside the paired band by round-off, float64 showed
            if len(streak) >= patience:
                parted.update(streak)
            streak = []
        else:
            streak.append(e["index"])
    return parted


def _band_keys(run) -> list:
    evals = run.records.evals
    parted = _parted(evals, run.cfg.train.patience)
    keys = []
    for name in dict.fromkeys(pt["series"] for e in evals for pt in e["points"]):
        rows = [(e, pt) for e in evals for pt in e["points"] if pt["series"] == name]
        bad = [(e, pt) for e, pt in rows if not pt["inside"] and e["index"] in parted]
        judged = [(e, pt) for e, pt in rows if pt["limit"] is not None and not e.get("arbitrated")]
        worst = max(bad or judged or rows, key=lambda r: r[1]["gap"] / r[1]["limit"] if r[1]["limit"] else 0.0)[1]
        key = KeyResult(id=Key(Kind.BAND, name), passed=not bad, count=len(rows))
        if judged:  # the evaluation nearest to (or furthest past) its band, as every key's worst
            key.mean_abs = key.max_abs = worst["gap"]
            key.threshold = key.max_threshold = worst["limit"]
        else:
            key.note = "not judged against a band (the independent regime, and not a value in [0, 1])"
        if bad:
            e, pt = bad[0]
            key.reason = (f"outside its band at evaluation{'s' if len(bad) > 1 else ''} "
                          f"{', '.join(str(e['index']) for e, _ in bad)} (from step {e['step']}: torch {pt['torch']:.6g}, "
                          f"paddle {pt['paddle']:.6g}, |d| {fmt(pt['gap'])} > {fmt(pt['limit'])})")
        keys.append(key)
    return keys


def _lr_key(run) -> list:
    lr = run.records.lr
    if not lr["torch"]:
        return []
    t, p = np.asarray(lr["torch"]), np.asarray(lr["paddle"])
    key = KeyResult(id=Key(Kind.BAND, "lr"), passed=run.lr_gap is None, count=len(t),
                    mean_abs=float(np.mean(np.abs(t - p))), max_abs=float(np.max(np.abs(t - p))), rtol=band.LR_RTOL,
                    max_rel=float(np.max(np.abs(t - p) / np.maximum(np.maximum(np.abs(t), np.abs(p)), 1e-12))))
    if run.lr_gap is not None:
        s = run.lr_gap
        key.reason = f"the learning rates part at step {s}: torch {t[s]:.6g}, paddle {p[s]:.6g}"
    return [key]


def account(run) -> dict:
    """report.json's `run` of the train check."""
    done = run.records.steps
    stop = None
    if run.stop is not None:
        rate = run.seconds / max(1, done - (run.resumed or 0)) if run.seconds else None
        agreed = next((e for e in run.records.evals if e["index"] == run.patience.agreed), None)
        stop = {**run.stop, "steps_done": done, "steps_saved": run.plan.total - done,
                "seconds_saved_estimate": round(rate * (run.plan.total - done), 1) if rate else None,
                "agreed": {"evaluation": agreed["index"], "step": agreed["step"]} if agreed else
                {"evaluation": 0, "step": 0}}
    return {"mode": run.plan.mode, "regime": run.regime, "steps": run.plan.total, "steps_done": done,
            "per_epoch": run.plan.per_epoch, "epochs": run.cfg.train.epochs, "evaluate_at": list(run.plan.evals),
            "patience": run.cfg.train.patience, "early_stop": run.session.options.early_stop,
            "band": {"paired_rtol": band.PAIRED_RTOL, "z": band.Z, "lr_rtol": band.LR_RTOL},
            "evaluations": run.records.evals, "stopped": stop, "resumed_from": run.resumed,
            "train_s": round(run.seconds, 3)}


def _notes(run) -> list:
    plan, acc = run.plan, account(run)
    how = MODES[plan.mode].format(source=plan.source)
    shared = ("the same batches in the same order, so the curves began in the paired band (relative "
              f"{band.PAIRED_RTOL:g})" if plan.regime == band.PAIRED else "two samples of one random process: "
              f"the independent band ({band.Z:g} standard errors of the difference)")
    notes = [f"trained on {how}: {shared}; dropout as each model has it, its masks drawn alike on both sides where its "
             "calls allow (backends/masks.py)"]
    stop = acc["stopped"]
    if stop is not None:
        what = {"lr": f"the learning rates parted at step {stop['step']}",
                "spot_check": "a step of the first ones, re-run from the same state on both sides, differs",
                "band": f"the curves stayed outside the band for {run.cfg.train.patience} evaluations in a row "
                        f"({', '.join(map(str, run.patience.streak))})"}[stop["why"]]
        saved = f", about {stop['seconds_saved_estimate']:g} s of training" if stop["seconds_saved_estimate"] else ""
        notes.append(f"stopped early at step {stop['steps_done']} of {plan.total}: {what}; {stop['steps_saved']} steps "
                     f"not trained{saved} (--no-early-stop trains to the end)")
    elif run.records.evals and all(e["inside"] or e.get("arbitrated") for e in run.records.evals):
        notes.append(f"every curve within its band at all {len(run.records.evals)} evaluations: the verdict is the "
                     "final metric's, within [tolerance] train")
    return notes


def write(run, res: CheckResult) -> None:
    ref, other = final_metric(run)
    writer = run.session.writer
    for side, metric in (("torch", ref), ("paddle", other)):
        writer.arrays(f"train_align_{side}.npy", {**{str(k): v for k, v in metric.items()}, **run.records.arrays(side)})
    writer.log("train_align_diff.log", res, ref, other)
    with writer.writing("train_curve.png") as path:
        note = runplot.run_curve(path, res.to_json(), {side: run.records.arrays(side) for side in SIDES},
                                 run.cfg.name)
    if note:
        res.notes.append(note)
