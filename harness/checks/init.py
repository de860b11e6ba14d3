"""The init check (the guide's initialization checkpoint): each side's model as its own seeded build
made it, before any weight is copied, compared per paired parameter as a distribution (the pairing
is the weight plan's: harness/mapping/weights.py). A port that passes every other check on torch's
copied weights can still train differently from scratch: paddle's Linear starts XavierUniform
with a zero bias where torch's starts kaiming_uniform(a=√5) with a uniform one."""

from __future__ import annotations

import numpy as np

from harness.checks.common import check
from harness.checks.initstats import ALPHA, MIN_VALUES, TESTS, Side, describe, fans, matching, p_values, portrait
from harness.verdict.diff import CheckResult, KeyResult, fmt
from harness.verdict.keys import value
from harness.workers.protocol import SIDES


@check
def init(session) -> CheckResult:
    yield {}  # nothing to ask: each worker summarised its fresh model at set-up (harness/session.py)
    result, ref, other = CheckResult("init"), {}, {}
    summaries = {side: session.infos[side].get("init") for side in SIDES}
    if session.plan is None or None in summaries.values():
        result.reason = ("no parameter pairing: the pair converts weights with its own torch_to_paddle"
                         if session.plan is None else "the fresh models were not summarised")
        return result
    pairs = _pairs(session.plan, summaries)
    random = [(a, b) for a, b in pairs if not (a.constant or b.constant) and min(a.n, b.n) >= MIN_VALUES]
    level = ALPHA / (TESTS * max(len(random), 1))
    small = []
    for a, b in pairs:
        if not (a.constant or b.constant) and min(a.n, b.n) < MIN_VALUES:
            small.append(f"{a.name} ({min(a.n, b.n)} values)")
            continue
        result.keys.append(judge(a, b, level))
        ref[value(a.name)], other[value(a.name)] = _stats(a), _stats(b)
    result.notes.append(f"{len(random)} random tensors compared as distributions (mean, scale, shape), each test at "
                        f"p >= {fmt(level)}: a false alarm on a correct port in at most {fmt(ALPHA)} of runs "
                        "(Bonferroni); constants compared exactly")
    if small:
        result.notes.append(f"too small to tell (fewer than {MIN_VALUES} random values), not judged: {', '.join(small)}")
    session.writer.check(result, ref, other)
    return result


def judge(a: Side, b: Side, level: float) -> KeyResult:
    """torch's tensor `a` against paddle's `b`: constants exactly, random ones by three tests."""
    key = KeyResult(id=value(a.name), passed=False, shape=list(a.shape), count=a.n)
    if a.constant and b.constant:
        key.passed = a.stats["min"] == b.stats["min"]
    elif not (a.constant or b.constant):
        p = p_values(a.stats, b.stats)
        key.passed = min(p.values()) >= level
        key.note = f"p: mean {fmt(p['mean'])}, scale {fmt(p['scale'])}, shape {fmt(p['shape'])} (each >= {fmt(level)})"
    if key.passed:
        key.note = f"{describe(a)} on both sides" + (f"; {key.note}" if key.note else "")
        return key
    renamed = f" {b.name}" if b.name != a.name else ""
    key.reason = (f"paddle{renamed}: {portrait(b)}; torch: {portrait(a)}; "
                  f"paddle.nn.initializer.{matching(a)} would match torch")
    return key


def _pairs(plan, summaries: dict) -> list:
    """(torch Side, paddle Side) per paired tensor, a bias knowing its module's fan_in on each side."""
    entries = [e for e in plan.entries if not e.alias_of]
    fan_in = {}
    for e in entries:
        if e.torch_name.endswith("weight") and len(e.torch_shape) >= 2:
            for side, name, shape in (("torch", e.torch_name, e.torch_shape), ("paddle", e.paddle_name, e.paddle_shape)):
                fan_in[side, name.rpartition('.')[0]] = fans(Side(side, name, tuple(shape), {}))[0]
    pairs = []
    for e in entries:
        label = e.torch_name + (f"[{e.part[0] + 1}/{e.part[1]}]" if e.part else "")
        pairs.append((Side("torch", label, tuple(e.torch_shape), summaries["torch"][e.torch_name],
                           fan_in.get(("torch", e.torch_name.rpartition(".")[0]))),
                      Side("paddle", e.paddle_name, tuple(e.paddle_shape), summaries["paddle"][e.paddle_name],
                           fan_in.get(("paddle", e.paddle_name.rpartition(".")[0])))))
    return pairs


def _stats(side: Side) -> np.ndarray:
    """What the artifacts hold per tensor: mean, std, min, max (reprod_log's format)."""
    s = side.stats
    return np.array([s.get("mean", 0.0), s.get("std", 0.0), s.get("min", 0.0), s.get("max", 0.0)], np.float64)
