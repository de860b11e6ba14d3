"""The verdict rules: every second look at a key that failed the plain diff, in one place.

A check compares (harness/verdict/diff.py), then `apply` runs the named rules below in a fixed order,
then the check writes its artifacts. A rule may only turn a failed key into a passed one, and
it says so on the key (`rule`, and the reason in `note`), so report.json shows which rule
changed which verdict. Each rule holds one constant and the measured fact it rests on
(docs/traps.md has the numbers).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from harness.verdict import updates
from harness.verdict.diff import CheckResult, KeyResult
from harness.verdict.keys import Key, Kind

UNCONSTRAINED = "unconstrained_elements"
UPDATE_SCALE = "update_scale"
RANK_DRIFT = "rank_loss_drift"
VARIANCE_GAP = "variance_gap"
ARBITRATION = "float64_arbitration"
FALLBACK_RULES = (UNCONSTRAINED, UPDATE_SCALE, RANK_DRIFT)  # float32's rules; float64 decides without them
EXACT_KINDS = (Kind.LR, Kind.DROPOUT)  # keys whose values do not depend on the models' precision

# unconstrained_elements: a parameter element whose gradient is this small against the largest
# gradient is driven by rounding noise. Its true gradient is zero (a bias right before
# BatchNorm, the key third of attention's in_proj_bias); each framework's noise (~1e-9), divided
# by sqrt(v) under Adam, becomes its own full step of size lr, so such elements end 1e-4..1e-3
# apart after 5 steps of a correct port while every loss agrees to 1e-7.
UNCONSTRAINED_RATIO = 1e-6
# update_scale: float32 round-off in a correct port stays near 1e-6..1e-5 of the size of a
# parameter's update (or of a gradient's mean magnitude); a wrong decay or clip reaches 1e-3.
SCALE_RTOL = 1e-4
# rank_loss_drift: under Adam one rank's shard feels the noise-driven elements above, whose
# steps cancel in the averaged loss but not in a rank's own; measured at 2e-5..3e-5 of how far
# training moved that rank's loss in a correct port (tiny_transformer, 2 ranks, AdamW lr 1e-2).
RANK_DRIFT_RTOL = 1e-4
# variance_gap: torch updates BatchNorm's running variance with the unbiased batch variance,
# paddle with the biased one: a gap of at most running_var / N per update (N values per
# channel); the slack covers float32 rounding of that bound.
VARIANCE_GAP_SLACK = 1.01


# float64_arbitration: float64 carries 29 more mantissa bits than float32, so a difference made by
# round-off shrinks by about 2^29 when both sides recompute in float64 (measured on an exact
# TransformerEncoder port under AdamW: float32 loss differences 2e-6..1e-5, float64 1.6e-15..1.6e-12),
# while a real difference does not shrink at all. A float32 failure whose float64 difference is
# within the key's own tolerance, or below 2^-10 of the float32 one (2^19 left for amplification
# by training), was round-off.
SHRINK = 2.0 ** -10


@dataclass(frozen=True)
class Evidence:
    """What the rules may read besides a key's two values (parameters and gradients by torch name)."""

    initial: dict = field(default_factory=dict)  # parameters before the first step
    grads_ref: dict = field(default_factory=dict)  # last gradients of the reference side
    grads_other: dict = field(default_factory=dict)
    adaptive: bool = False  # an Adam-type optimizer (or a pair's own, unknown one)
    fallback: bool = True  # float32's rules apply; in float64 nothing needs releasing


def apply(result: CheckResult, ref: dict, other: dict, evidence: Evidence) -> None:
    """The rules in their fixed order over every key that failed the diff on finite values."""
    if not evidence.fallback:
        return
    largest = max((float(np.abs(g).max()) for g in evidence.grads_ref.values() if np.size(g)), default=0.0)
    for key in result.keys:
        if key.passed or key.mean_abs is None or key.nonfinite:
            continue
        if key.id.kind in (Kind.PARAM, Kind.GRAD):
            _judge_tensor(result, key, ref[key.id], other[key.id], evidence, largest)
        elif key.id.kind is Kind.LOSS and key.id.rank is not None and evidence.adaptive:
            rank_loss_drift(result, key, ref, other)
    _note_unconstrained(result)


def _note_unconstrained(result: CheckResult) -> None:
    """One note for every parameter left (wholly or in part) unjudged, however many there are: a
    model has one such key bias per attention layer. Each key's own note says how much of it."""
    names = [k.id.name for k in result.keys if k.rule == UNCONSTRAINED]
    if names:
        result.notes.append(
            f"{len(names)} parameter(s) not judged where their gradient is rounding noise, which an adaptive "
            f"optimizer (or an update judged against itself) turns into a step of its own: "
            f"{', '.join(f'{n}: unconstrained' for n in names[:6])}{' ...' if len(names) > 6 else ''} "
            "(e.g. attention's key bias, a bias right before BatchNorm; each key's note in report.json)")


def unconstrained_mask(name: str, evidence: Evidence, largest: float, *, by_update: bool = False):
    """unconstrained_elements: the elements still judged (None: the rule does not apply). Under
    an adaptive optimizer; and for a parameter judged by its update under any optimizer, whose
    update is then rounding noise too, which a comparison relative to it cannot judge."""
    if not ((evidence.adaptive or by_update) and largest > 0 and name in evidence.grads_ref
            and name in evidence.grads_other):
        return None
    g = np.maximum(np.abs(evidence.grads_ref[name]), np.abs(evidence.grads_other[name]))
    return g > UNCONSTRAINED_RATIO * largest


def within_update_scale(mean_abs: float, max_abs: float, size: float) -> bool:
    """update_scale: the difference is round-off against the size of what moved it."""
    return mean_abs <= SCALE_RTOL * size and max_abs <= 100 * SCALE_RTOL * size


def gradient_within_scale(relative: float) -> bool:
    """update_scale for a gradient given as mean |d| / mean |gradient| (localization)."""
    return relative <= SCALE_RTOL


def _judge_tensor(result: CheckResult, key: KeyResult, ref, other, evidence: Evidence, largest: float) -> None:
    name = key.id.name
    a, b = np.asarray(ref, np.float64), np.asarray(other, np.float64)
    by_update = key.update is not None
    keep = unconstrained_mask(name, evidence, largest, by_update=by_update) if key.id.kind is Kind.PARAM else None
    if keep is not None and not keep.any():
        g = np.maximum(np.abs(evidence.grads_ref[name]), np.abs(evidence.grads_other[name]))
        _release(key, UNCONSTRAINED,
                 f"unconstrained: its gradient is rounding noise (max |g| {g.max():.2g} vs {largest:.2g} largest), "
                 "and so is its update (an adaptive optimizer makes it a step of size lr); its value is not judged")
        return
    keep = np.ones(a.shape, bool) if keep is None else keep
    d = np.abs(a - b)[keep]
    if by_update:  # judged by its update (updates.py): the same limits over the elements kept
        if keep.all():
            return
        size, largest_value = updates.update_size(ref, evidence.initial[name], keep)
        mean_limit, max_limit = updates.limits(size, largest_value, np.asarray(ref).dtype)
        within, what = d.mean() <= mean_limit and d.max() <= max_limit, f"{updates.UPDATE_RTOL:g} of their update"
    elif key.id.kind is Kind.PARAM and name in evidence.initial:  # a [tolerance] pattern chose absolute limits
        size = float(np.mean(np.abs(a - evidence.initial[name])[keep]))
        within = d.mean() <= key.threshold and d.max() <= key.max_threshold
        within, what = within or within_update_scale(float(d.mean()), float(d.max()), size), "its update"
    elif key.id.kind is Kind.GRAD:
        size = float(np.mean(np.abs(a)))
        within = d.mean() <= key.threshold and d.max() <= key.max_threshold
        within, what = within or within_update_scale(float(d.mean()), float(d.max()), size), "the gradient"
    else:
        return
    if not within:
        return
    partial = not keep.all()
    why = (f"{int((~keep).sum())} of {keep.size} elements unconstrained (their gradient and update are rounding "
           "noise), the others ") if partial else ""
    why += f"within {what}" if by_update else f"within {SCALE_RTOL:g} of the size of {what} (mean {size:.2g})"
    _release(key, UNCONSTRAINED if partial else UPDATE_SCALE, why)


def rank_loss_drift(result: CheckResult, key: KeyResult, ref: dict, other: dict) -> None:
    """A rank's loss after step 0 within RANK_DRIFT_RTOL of how far training moved it. Step 0
    (every rank on the same weights), the averaged losses and the sync keys stay strict."""
    start = Key(Kind.LOSS, step=0, rank=key.id.rank)
    if key.id.step == 0 or start not in ref:
        return
    moved = abs(float(np.float64(ref[key.id])) - float(np.float64(ref[start])))
    d = abs(float(np.float64(ref[key.id])) - float(np.float64(other[key.id])))
    if d <= RANK_DRIFT_RTOL * moved:
        _release(key, RANK_DRIFT,
                 f"within {RANK_DRIFT_RTOL:g} of how far training moved this rank's loss ({moved:.3g}): an adaptive "
                 "optimizer steps rounding-noise gradient elements by lr")
        result.notes.append(f"{key.key}: {key.note}")


def arbitrate(narrow: CheckResult, wide: CheckResult) -> None:
    """float64_arbitration: every key of a failed float32 check that failed the plain diff (also
    those a float32 rule released) is decided by the same check recomputed in float64."""
    by_id = {k.id: k for k in wide.keys}
    for key in narrow.keys:
        if arbitrable(key):
            _decide(key, by_id.get(key.id))
    narrow.arbitration = "float64"


def arbitrable(key: KeyResult) -> bool:
    """A key float64 can decide: it failed the plain diff on finite values of equal shapes (a
    NaN, a shape or a missing key is never round-off) that depend on the models' precision, or
    a float32 rule released it."""
    if key.passed:
        return key.rule in FALLBACK_RULES
    return key.mean_abs is not None and not key.nonfinite and not exact(key)


def exact(key: KeyResult) -> bool:
    """A key whose values no precision changes: integers and booleans, a learning rate (computed
    in Python floats, whatever the models' dtype), a dropout's probability (configuration)."""
    return key.id.kind in EXACT_KINDS or (key.dtype is not None and key.precision == "")


def settled(check: CheckResult) -> bool:
    """A failed check that float64 cannot turn: nothing compared, or a failing key it cannot decide."""
    return not check.passed and (bool(check.reason) or not check.compared
                                 or any(not arbitrable(k) for k in check.failing))


def _decide(key: KeyResult, wide: KeyResult | None) -> None:
    key.precision = "float64"
    if wide is None or wide.mean_abs is None or wide.nonfinite:
        key.passed, key.rule = False, ""
        key.reason = f"in float64: {wide.reason if wide is not None else 'missing'}"
        return
    if key.rtol is not None:
        shrunk = wide.max_rel <= SHRINK * key.max_rel
        numbers = f"float32 max rel {key.max_rel:.2g}, float64 {wide.max_rel:.2g}"
    else:
        shrunk = wide.mean_abs <= SHRINK * key.mean_abs and wide.max_abs <= SHRINK * key.max_abs
        numbers = f"float32 {key.mean_abs:.2g}, float64 {wide.mean_abs:.2g}"
    if wide.passed or shrunk:
        key.passed, key.rule, key.reason = True, ARBITRATION, ""
        key.note = f"{numbers}: round-off"
    else:
        key.passed, key.rule = False, ""
        key.reason = f"float64 still differs ({numbers}): {wide.reason}"


def within_variance_gap(torch_var: np.ndarray, paddle_var: np.ndarray, count: int, max_abs: float) -> bool:
    """variance_gap: running variances within running_var / N of each other (localization)."""
    gap = np.abs(torch_var.astype(np.float64) - paddle_var)
    return bool(np.all(gap <= np.abs(torch_var) / count * VARIANCE_GAP_SLACK + max_abs))


def _release(key: KeyResult, rule: str, why: str) -> None:
    key.note = f"{why} [{key.reason}]"
    key.passed, key.reason, key.rule = True, "", rule
