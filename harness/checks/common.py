"""What every check does after its workers answered: compare, apply the named verdict rules
(harness/verdict/rules.py), write the artifacts. The one place a verdict is decided."""

from __future__ import annotations

import functools

import numpy as np

from harness.report.artifacts import tensor_stats
from harness.verdict import keys, rules, updates
from harness.verdict.diff import CheckResult, KeyResult, compare_dicts
from harness.verdict.keys import Key, Kind
from harness.verdict.rules import Evidence
from harness.verdict.tolerance import Tolerance
from harness.workers.protocol import SIDES, nbytes

# Parameters and gradients of both sides up to this size are saved whole, beyond as statistics.
FULL_DUMP_BYTES = 64 << 20


def check(steps):
    """A check written as a generator: it yields the requests it needs (worker name -> Request)
    and is sent their replies, then returns its CheckResult. Called directly, it runs to the
    end at once; `steps` lets the coordinator submit every check's first requests before it
    judges any, so the workers run ahead while it compares (coordinator.run)."""

    @functools.wraps(steps)
    def run(session, **kwargs) -> CheckResult:
        return finish(steps(session, **kwargs), session.call)

    run.steps = steps
    return run


def finish(gen, call, replies=None) -> CheckResult:
    """Drive a check's generator: send it replies (or start it), answer its further requests
    with `call`, return its result."""
    try:
        requests = next(gen) if replies is None else gen.send(replies)
        while True:
            requests = gen.send(call(requests))
    except StopIteration as stop:
        return stop.value


def judge(check: str, ref: dict, other: dict, tolerances, evidence: Evidence | None = None) -> CheckResult:
    """Compare every key, judge parameters by their update where the initial weights are known,
    then apply the verdict rules in their fixed order."""
    evidence = evidence or Evidence()
    result = compare_dicts(check, ref, other, tolerances)
    updates.judge_params(result, ref, other, evidence.initial, tolerances)
    rules.apply(result, ref, other, evidence)
    return result


def record(session, check: str, ref: dict, other: dict) -> CheckResult:
    """judge with the run's tolerances, then write the check's artifacts."""
    result = judge(check, ref, other, session.cfg.tolerance)
    session.writer.check(result, ref, other)
    return result


DROPOUT_MODES = {"upscale_in_train": 0.0, "downscale_in_infer": 1.0}


def judge_dropouts(session, result: CheckResult, ref: dict, other: dict) -> None:
    """Train-mode steps run with every dropout at p 0 (each framework draws its own masks), so
    the dropouts themselves are compared: each pair's probability and mode must be equal, and a
    probability that differs never passes because dropout was off. Adds the keys to ref/other."""
    pairs = {Key(Kind.DROPOUT, d.torch): d for d in (session.plan.dropouts if session.plan else [])}
    mine = {key: np.array([d.torch_site["p"], DROPOUT_MODES.get(d.torch_site["mode"], -1.0)]) for key, d in pairs.items()}
    theirs = {key: np.array([d.paddle_site["p"], DROPOUT_MODES.get(d.paddle_site["mode"], -1.0)])
              for key, d in pairs.items()}
    judged = judge(result.name, mine, theirs, Tolerance(0.0, max=0.0))
    for key in judged.keys:
        if not key.passed:
            d = pairs[key.id]
            key.reason = (f"torch {d.torch} p {d.torch_site['p']:g} ({d.torch_site['mode']}) vs paddle {d.paddle} "
                          f"p {d.paddle_site['p']:g} ({d.paddle_site['mode']})")
    lone = _lone_dropouts(session)
    result.keys += judged.keys + lone
    ref.update(mine)
    other.update(theirs)
    if lone or any(max(d.torch_site["p"], d.paddle_site["p"]) > 0 for d in pairs.values()):  # else nothing was off
        result.notes.append(f"dropout at p 0 in both frameworks for the train-mode steps (modules and functional "
                            f"dropout: each framework draws its own masks); the {len(pairs)} paired dropouts' "
                            f"probabilities and modes are compared as dropout:<module> keys, {len(lone)} without a "
                            "counterpart fail")


def _lone_dropouts(session) -> list:
    """A dropout the forward calls with p > 0 that pairs with none on the other side is a
    difference in training, even with every dropout off for the comparison."""
    lone = []
    for site in (session.plan.unpaired_dropouts if session.plan else []):
        if site.get("called") and site["p"] > 0:
            other = "paddle" if site["side"] == "torch" else "torch"
            lone.append(KeyResult(id=Key(Kind.DROPOUT, site["name"], side=site["side"]), passed=False,
                                  reason=f"{site['side']} {site['name']} drops out with p {site['p']:g} in train mode and "
                                         f"no {other} dropout pairs with it ({site['why']})"))
    return lone


def judge_updates(session, ref: dict, other: dict, out: dict, overrides: dict | None) -> tuple:
    """The loss keys in ref/other plus the parameters after the last step and the last gradients
    (by torch name), judged with the update rules; returns (result, params, grads) per side."""
    params = dict(zip(SIDES, session.by_torch_name(out["torch"]["params"], out["paddle"]["params"])))
    grads = dict(zip(SIDES, session.by_torch_name(out["torch"]["grads"], out["paddle"]["grads"])))
    for side, target in (("torch", ref), ("paddle", other)):
        target.update({**keys.named(Kind.PARAM, params[side]), **keys.named(Kind.GRAD, grads[side])})
    evidence = Evidence(session.initial_torch, grads["torch"], grads["paddle"], session.adaptive(overrides),
                        fallback=session.precision == "float32")
    result = judge("backward", ref, other, session.cfg.tolerance, evidence)
    if session.plan is None and session.identity is not None:
        left = [name for name, _ in session.identity.dropped if name in out["torch"]["params"]]
        result.notes.append("the pair converts weights with its own torch_to_paddle: parameters and gradients are "
                            "compared under the torch tensor each paddle one equals" + (
                                f"; not compared, no paddle tensor identified by value: {', '.join(left[:8])}"
                                f"{' ...' if len(left) > 8 else ''} (weight_map.txt says why)" if left else ""))
    result.decay = decay_by_torch_name(session.plan or session.identity, {side: out[side].get("decay") for side in SIDES})
    differs = decay_difference(result.decay)
    if differs:
        result.notes.append(differs)
    return result, params, grads


def decay_by_torch_name(plan, decay: dict) -> dict:
    """Which parameters each side's optimizer decays and how ('L2 0.0001'), both by torch name
    (through the weight plan); a side is None when its optimizer (a pair's own) is of a kind the
    worker cannot read."""
    if decay.get("paddle") is not None and plan is not None:
        names = plan.torch_names()
        decay = {**decay, "paddle": {names.get(n, n): how for n, how in decay["paddle"].items()}}
    return decay


def decay_difference(decay: dict) -> str:
    """'' when both sides decay the same parameters alike (or one side is unknown), else what differs."""
    t, p = decay.get("torch"), decay.get("paddle")
    if t is None or p is None or t == p:
        return ""
    parts = []
    for who, mine, theirs, other in (("paddle", p, t, "torch"), ("torch", t, p, "paddle")):
        only = [n for n in mine if n not in theirs]
        if only:
            parts.append(f"{who} decays {len(only)} parameters that {other} does not: {_names(only)}")
    unlike = [n for n in t if n in p and t[n] != p[n]]
    if unlike:
        parts.append(f"{len(unlike)} are decayed differently ({unlike[0]}: torch {t[unlike[0]]}, "
                     f"paddle {p[unlike[0]]})")
    return "weight decay differs: " + "; ".join(parts)


def _names(names: list, shown: int = 8) -> str:
    return ", ".join(names[:shown]) + (f" ... ({len(names) - shown} more)" if len(names) > shown else "")


def save_tensors(session, result: CheckResult, **by_kind: dict) -> None:
    """bp_<kind>_<side>.npy whole where they are small or --save-tensors asks, else per-tensor
    statistics (bp_<kind>_stats_<side>.npy): a model-sized dump per side is GBs for real models."""
    size = sum(nbytes(v) for arrays in by_kind.values() for v in arrays["torch"].values()) * 2
    full = session.options.save_tensors or size <= FULL_DUMP_BYTES
    for kind, arrays in by_kind.items():
        for side in SIDES:
            if full:
                session.writer.arrays(f"bp_{kind}_{side}.npy", arrays[side])
            else:
                session.writer.arrays(f"bp_{kind}_stats_{side}.npy", tensor_stats(arrays[side]))
    result.tensor_dumps = "full" if full else "statistics"
    if not full:
        result.notes.append(f"{' and '.join(by_kind)} saved as per-tensor statistics (mean, std, min, max, L2 norm) in "
                            f"bp_*_stats_*.npy: {size / 2**20:.0f} MiB > {FULL_DUMP_BYTES >> 20} MiB; --save-tensors "
                            "writes them whole")
