"""What a run costs once its answer is known, printed as a ratio from one run: the encoder pair
(benchmarks/pairs/encoder4, every default check) as it is, and with GELU for ReLU on the paddle
side (gelu.toml), a bug the forward check catches. The misaligned run should pay little more
than the aligned one (target: at most 1.3x): exact keys and the checks after the first real
divergence are not re-run in float64, and localization traces only the first failing check.

Usage: python benchmarks/bench_misaligned.py [--pair benchmarks/pairs/encoder4]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from harness import api

PHASES = ("float64 arbitration", "locating")


def _timed(toml: Path, out: Path) -> tuple:
    """(wall seconds, report, seconds from the start of each phase to the end of the run)."""
    marks: dict = {}
    start = time.perf_counter()

    def progress(message: str) -> None:
        for phase in PHASES:
            if message.startswith(phase):
                marks.setdefault(phase, time.perf_counter())

    report = api.check(toml, out=out, progress=progress)
    end = time.perf_counter()
    return end - start, report, {phase: end - t for phase, t in marks.items()}


def _describe(label: str, wall: float, report, phases: dict) -> str:
    div = report.first_divergence
    verdict = "ALIGNED" if report.aligned else f"MISALIGNED, first divergence {div.check} at {div.layer}"
    decided = {c.name: sum(k.rule == "float64_arbitration" for k in c.keys) for c in report.checks
               if c.arbitration == "float64"}
    wide = ", ".join(f"{name} ({n} keys round-off)" for name, n in decided.items()) or "none"
    after = ", ".join(f"{phase} to the end {s:.1f} s" for phase, s in phases.items()) or "no float64, no localization"
    return f"{label}: {wall:.1f} s, {verdict}; checks re-run in float64: {wide}; {after}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pair", type=Path, default=Path(__file__).parent / "pairs" / "encoder4")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        aligned, rep_a, phases_a = _timed(args.pair / "pair.toml", Path(tmp) / "aligned")
        misaligned, rep_m, phases_m = _timed(args.pair / "gelu.toml", Path(tmp) / "misaligned")
    print(_describe("aligned run (pair.toml)", aligned, rep_a, phases_a))
    print(_describe("misaligned run (gelu.toml)", misaligned, rep_m, phases_m))
    print(f"misaligned / aligned wall: {misaligned / aligned:.2f}x (target <= 1.3x)")


if __name__ == "__main__":
    main()
