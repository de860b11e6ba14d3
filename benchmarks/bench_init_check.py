"""The init check's error rates, measured: how often it fails a correct port (false alarms) and how
often it catches a real difference (power).

1. Correct ports, end to end: examples/init_check/matched.toml (torch's initializers set on the
   paddle side) and, when transformers and paddlenlp are installed, examples/bert_sst2 (HF vs
   PaddleNLP, both normal(0, 0.02)), each built with --seeds seeds (default 100) in one pair of
   workers; every failing run is a false alarm. examples/init_check/pair.toml (paddle's defaults)
   over the same seeds: every passing run is a miss.
2. The tests alone (numpy): --pairs tensor pairs drawn from one distribution (normal or uniform,
   4096 values a side), the rate at which each test's p-value falls below 1e-3 and 1e-4 (a
   calibrated test: at that rate); then the power against a 10 % larger std, uniform vs normal of
   equal std, and a mean shift of 0.1 std (4096 and 16384 values a side), at the level of a run
   with 1, 20 and 100 random tensors.

Usage: python benchmarks/bench_init_check.py [--seeds 100] [--pairs 4000] [--skip-e2e] [--skip-stats]
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backends.state import summarize  # noqa: E402 (numpy only)
from harness.checks.initstats import ALPHA, TESTS, p_values  # noqa: E402


def end_to_end(toml: Path, seeds: int) -> tuple:
    """(runs failed, seconds a seed) of the init check over `seeds` seeds of one pair."""
    from harness.checks import init
    from harness.config import parse
    from harness.session import RunOptions, Session

    cfg = parse.load(toml).replace(checks=("init",))
    failed, reasons = 0, []
    with tempfile.TemporaryDirectory() as out:
        session = Session(cfg, RunOptions(out_dir=Path(out)), progress=lambda m: None)
        try:
            session.start()
            start = time.perf_counter()
            for seed in range(seeds):
                session.use(cfg.replace(data=dataclasses.replace(cfg.data, seed=seed)))
                result = init.init(session)
                if not result.passed:
                    failed += 1
                    reasons.append(f"seed {seed}: {result.failing[0].key}: {result.failing[0].note or result.why}")
            per_seed = (time.perf_counter() - start) / seeds
        finally:
            session.close()
    return failed, per_seed, reasons


def draw(rng, family: str, n: int, std: float = 1.0, mean: float = 0.0) -> np.ndarray:
    if family == "uniform":
        return (mean + rng.uniform(-1, 1, n) * std * np.sqrt(3)).astype(np.float32)
    return (mean + rng.standard_normal(n) * std).astype(np.float32)


def p_of(rng, a: np.ndarray, b: np.ndarray) -> dict:
    return p_values(summarize(a, rng), summarize(b, rng))


def calibration(pairs: int, n: int = 4096) -> None:
    rng = np.random.default_rng(0)
    for family in ("normal", "uniform"):
        ps = [p_of(rng, draw(rng, family, n), draw(rng, family, n)) for _ in range(pairs)]
        rates = {test: [np.mean([p[test] < cut for p in ps]) for cut in (1e-3, 1e-4)] for test in ps[0]}
        print(f"  {family:8} same distribution, {pairs} pairs of {n}: "
              + ", ".join(f"{t} p<1e-3 {r[0]:.4f} p<1e-4 {r[1]:.5f}" for t, r in rates.items()))


def power(trials: int, n: int) -> None:
    rng = np.random.default_rng(1)
    cases = {"std x1.1 (normal)": lambda: (draw(rng, "normal", n), draw(rng, "normal", n, std=1.1)),
             "std x1.1 (uniform)": lambda: (draw(rng, "uniform", n), draw(rng, "uniform", n, std=1.1)),
             "uniform vs normal, equal std": lambda: (draw(rng, "uniform", n), draw(rng, "normal", n)),
             "mean + 0.1 std": lambda: (draw(rng, "normal", n), draw(rng, "normal", n, mean=0.1))}
    for label, make in cases.items():
        mins = [min(p_of(rng, *make()).values()) for _ in range(trials)]
        caught = {tensors: np.mean([m < ALPHA / (TESTS * tensors) for m in mins]) for tensors in (1, 20, 100)}
        print(f"  {label:30} {n} values a side: caught in " + ", ".join(
            f"{rate:.0%} at {t} tensor{'s' if t > 1 else ''}" for t, rate in caught.items()) + f" ({trials} trials)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=100)
    parser.add_argument("--pairs", type=int, default=4000)
    parser.add_argument("--skip-e2e", action="store_true")
    parser.add_argument("--skip-stats", action="store_true")
    args = parser.parse_args()
    if not args.skip_e2e:
        ports = [("correct", ROOT / "examples/init_check/matched.toml"), ("defaults", ROOT / "examples/init_check/pair.toml")]
        if all(importlib.util.find_spec(m) for m in ("transformers", "paddlenlp")):
            ports.insert(1, ("correct", ROOT / "examples/bert_sst2/pair.toml"))
        for kind, toml in ports:
            failed, per_seed, reasons = end_to_end(toml, args.seeds)
            verdict = f"false alarms {failed}/{args.seeds}" if kind == "correct" else f"caught {failed}/{args.seeds}"
            print(f"{toml.relative_to(ROOT)}: {verdict} ({per_seed:.2f} s a seed)")
            for line in reasons[:3] if kind == "correct" else []:
                print(f"  {line}")
    if not args.skip_stats:
        print(f"each test at level ALPHA / ({TESTS} x tensors), ALPHA = {ALPHA}")
        calibration(args.pairs)
        for n in (4096, 16384):
            power(max(args.pairs // 10, 100), n)


if __name__ == "__main__":
    main()
