"""What a reader needs first, computed once from report.json's data for every view (console,
report.html, the pytest plugin's message): the verdict line, each check's worst key against its
named limit, and which failing check comes first. Reads the report; decides no verdict."""

from __future__ import annotations

import math

from harness.verdict.diff import fmt

INF = math.inf


def _ratio(value, limit) -> float:
    if value is None:
        return 0.0
    if not limit:
        return INF if value > 0 else 0.0
    return value / limit


def criterion(key: dict) -> tuple:
    """(ratio, measured, limit) of the key's criterion nearest to (or furthest past) its limit, as
    `mean 0.163` against `1e-06`, `rel 0.07` against `rtol 0.0015`; a ratio above 1 fails. Keys
    that never got statistics (shape mismatch, NaN, one side only) rank first, their reason as
    the measured text."""
    if key.get("mean_abs") is None:  # no statistics: the reason (or note) is the whole story
        if key.get("passed"):
            return 0.0, key.get("note", "-"), None
        return INF, key.get("reason", "not compared"), None
    if key.get("rtol") is not None:
        return _ratio(key.get("max_rel"), key["rtol"]), f"rel {fmt(key.get('max_rel'))}", f"rtol {fmt(key['rtol'])}"
    if key.get("threshold") == 0 and key.get("max_threshold") == 0:
        return _ratio(key.get("max_abs"), 0), f"max {fmt(key.get('max_abs'))}", "0 (exact)"
    mean = (_ratio(key["mean_abs"], key.get("threshold")), "mean", key["mean_abs"], key.get("threshold"))
    peak = (_ratio(key.get("max_abs"), key.get("max_threshold")), "max", key.get("max_abs"), key.get("max_threshold"))
    ratio, which, value, limit = max(mean, peak, key=lambda c: c[0])
    floor = " (8-ulp floor)" if which in (key.get("floored") or ()) else ""
    return ratio, f"{which} {fmt(value)}", f"{fmt(limit)}{floor}"


def limit_text(key: dict) -> str:
    """Every limit a key was judged by, each named: `mean 1e-06, max 1e-04`, `rtol 0.0015`,
    `exact`, with the float32 floor said where it raised one."""
    if key.get("rtol") is not None:
        return f"rtol {fmt(key['rtol'])}"
    if key.get("threshold") is None:
        return "-"
    if key.get("threshold") == 0 and key.get("max_threshold") == 0:
        return "exact"
    floored = key.get("floored") or ()
    parts = [f"{name} {fmt(key.get(field))}{'*' if name in floored else ''}"
             for name, field in (("mean", "threshold"), ("max", "max_threshold"))]
    return ", ".join(parts) + (" (*8-ulp floor)" if floored else "")


def judged(check: dict) -> list:
    """Keys judged by their plain limits: a key a named rule released is counted, not ranked."""
    return [k for k in check["keys"] if not k.get("rule")]


def worst(check: dict) -> dict | None:
    """The key furthest past (or nearest to) its limit, with its measured and limit texts."""
    ranked = [(criterion(k), k) for k in judged(check)]
    if not ranked:
        return None
    (ratio, measured, limit), key = max(ranked, key=lambda item: item[0][0])
    return {"key": key["key"], "ratio": ratio, "measured": measured, "limit": limit}


def against(w: dict | None) -> str:
    """`mean 0.163 > 1e-06`: the worst key's measure against its limit, or its reason alone."""
    if w is None:
        return "-"
    if w["limit"] is None:
        return w["measured"]
    return f"{w['measured']} {'>' if w['ratio'] > 1 else '<='} {w['limit']}"


def released(check: dict) -> int:
    return sum(1 for k in check["keys"] if k.get("rule") and k.get("passed"))


def compared(check: dict) -> int:
    return sum(1 for k in check["keys"] if k.get("count", 0) > 0)


def failing_checks(report: dict) -> list:
    return [c for c in report["checks"] if not c["passed"]]


def headline(report: dict) -> str:
    """The verdict in one plain line: what a reader, a CI log and an assertion message lead with."""
    checks = report["checks"]
    bad = failing_checks(report)
    if report.get("aligned"):
        return f"ALIGNED  {report['name']}: {len(checks)} of {len(checks)} checks pass"
    if not checks:
        return f"MISALIGNED  {report['name']}: no check ran"
    return (f"MISALIGNED  {report['name']}: {len(bad)} of {len(checks)} checks fail, "
            f"first {bad[0]['name']} ({bad[0].get('reason', 'failed')})")


def divergence_line(div: dict) -> str:
    where = f" at layer {div['layer']}" if div.get("layer") else ""
    step = f" (step {div['step']})" if div.get("step") is not None else ""
    return f"{div['check']}{where}{step}: {div.get('detail', '')}"
