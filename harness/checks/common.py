"""What every check does after its workers answered: compare, apply the named verdict rules
(harness/rules.py), write the artifacts. The one place a verdict is decided."""

from __future__ import annotations

from harness import keys, rules
from harness.diff import CheckResult, compare_dicts
from harness.keys import Kind
from harness.protocol import SIDES
from harness.rules import Evidence


def judge(check: str, ref: dict, other: dict, tolerances, evidence: Evidence | None = None) -> CheckResult:
    """Compare every key, then apply the verdict rules in their fixed order."""
    result = compare_dicts(check, ref, other, tolerances)
    rules.apply(result, ref, other, evidence or Evidence())
    return result


def record(session, check: str, ref: dict, other: dict) -> CheckResult:
    """judge with the run's tolerances, then write the check's artifacts."""
    result = judge(check, ref, other, session.cfg.tolerance)
    session.writer.check(result, ref, other)
    return result


def judge_updates(session, ref: dict, other: dict, out: dict, overrides: dict | None) -> tuple:
    """The loss keys in ref/other plus the parameters after the last step and the last gradients
    (by torch name), judged with the update rules; returns (result, params, grads) per side."""
    params = dict(zip(SIDES, session.by_torch_name(out["torch"]["params"], out["paddle"]["params"])))
    grads = dict(zip(SIDES, session.by_torch_name(out["torch"]["grads"], out["paddle"]["grads"])))
    for side, target in (("torch", ref), ("paddle", other)):
        target.update({**keys.named(Kind.PARAM, params[side]), **keys.named(Kind.GRAD, grads[side])})
    evidence = Evidence(session.initial_torch, grads["torch"], grads["paddle"], session.adaptive(overrides))
    result = judge("backward", ref, other, session.cfg.tolerance, evidence)
    if session.plan is None:
        result.notes.append("parameters and gradients not compared: the pair converts weights with its own "
                            "torch_to_paddle, so which paddle tensor is which torch one is unknown; losses are compared")
    return result, params, grads
