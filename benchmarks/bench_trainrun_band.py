"""Where the training run's band comes from (harness/verdict/band.py), measured on examples/digits: the
correct port trained with several seeds, and each gap divided by the limit the band gave it.

- paired: each side its own items in the torch loader's order, the same dropout masks (the example
  as it is). Its curves part by round-off that training amplifies; the paired band triggers the
  float64 arbitration, which must find every traced step agreeing.
- independent: the same port with paddle reading its own order (DIGITS_ORDER=own: an
  IterableDataset shuffled by numpy): two samples of one random process, judged in standard errors. Z must leave the correct
  port's largest gap/limit well inside.

Also every injected mistake (DIGITS_BUG) with early stop and with --no-early-stop: the steps and the
seconds the early stop saved.

Usage: python benchmarks/bench_trainrun_band.py [--seeds 6] [--epochs 3] [--skip-mistakes]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "examples" / "digits"


def _run(folder: Path, out: Path, *args, env=None) -> tuple:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "harness", "run", str(folder / "pair.toml"), "--checks", "train",
                           "-q", "--out", str(out), *args], cwd=ROOT, capture_output=True, text=True, timeout=3600,
                          env=dict(os.environ, **(env or {})))
    wall = time.perf_counter() - start
    report = json.loads((out / "report.json").read_text()) if (out / "report.json").exists() else None
    if report is None:
        raise RuntimeError(proc.stdout + proc.stderr)
    return proc.returncode, wall, next(c for c in report["checks"] if c["name"] == "train"), report


def _pair(tmp: Path, name: str, seed: int, epochs: int = 3) -> Path:
    folder = tmp / name
    folder.mkdir()
    (folder / "pair.py").write_text((DIGITS / "pair.py").read_text())
    toml = (DIGITS / "pair.toml").read_text().replace("[data]\n", f"[data]\nseed = {seed}\n")
    (folder / "pair.toml").write_text(toml.replace("epochs = 3", f"epochs = {epochs}"))
    return folder


def _ratios(train: dict) -> tuple:
    """gap/limit of every judged point, by the band it was judged in: the paired band up to the
    evaluations float64 arbitrated as round-off, the independent one after them (or throughout)."""
    evals = train["run"]["evaluations"]
    switch = max((e["index"] for e in evals if e.get("arbitrated")), default=0)
    paired, independent = {}, {}
    for e in evals:
        own = train["run"]["mode"] == "own" or e["index"] > switch and switch
        for pt in e["points"]:
            if pt["limit"]:
                (independent if own else paired).setdefault(pt["series"], []).append(pt["gap"] / pt["limit"])
    return paired, independent


def seeds(tmp: Path, n: int, epochs: int) -> None:
    for own in (False, True):
        label = "independent (paddle's own order)" if own else "paired (the example as it is)"
        rows, all_paired, all_independent = [], {}, {}
        for seed in range(n):
            folder = _pair(tmp, f"{'own' if own else 'paired'}{seed}", seed, epochs)
            rc, wall, train, _ = _run(folder, tmp / f"o_{folder.name}", "--no-early-stop",
                                      env={"DIGITS_ORDER": "own"} if own else None)
            p, i = _ratios(train)
            for gathered, found in ((all_paired, p), (all_independent, i)):
                for series, values in found.items():
                    gathered.setdefault(series, []).extend(values)
            p, i = [v for vs in p.values() for v in vs], [v for vs in i.values() for v in vs]
            arbitrated = [e["index"] for e in train["run"]["evaluations"] if e.get("arbitrated")]
            metric = next(k for k in train["keys"] if k["key"].startswith("metric_"))
            rows.append(f"  seed {seed}: exit {rc}, {wall:.0f} s, arbitrated as round-off at evaluations {arbitrated}, "
                        f"final {metric['key']} max rel {metric.get('max_rel', 0):.2g} ({metric.get('rule') or 'plain'})"
                        f", largest gap/limit paired {max(p, default=0):.2f} independent {max(i, default=0):.2f}")
        print(f"{label}:")
        print("\n".join(rows))
        for name, gathered in (("paired", all_paired), ("independent", all_independent)):
            for series, values in gathered.items():
                v = np.asarray(values)
                print(f"  {name} band, {series}: {v.size} points, {np.mean(v > 1):.0%} outside, gap/limit median "
                      f"{np.median(v):.2f}, 99th percentile {np.percentile(v, 99):.2f}, max {v.max():.2f}")


def mistakes(tmp: Path) -> None:
    folder = _pair(tmp, "mistakes", 0)
    for order in ("", "own"):
        print(f"injected mistakes, {'paddle in its own order' if order else 'the example as it is'} (early stop vs "
              "--no-early-stop):")
        for bug in ("label_smoothing", "bn_momentum", "warmup", "decay_norms", "dropout"):
            env = {"DIGITS_BUG": bug, "DIGITS_ORDER": order}
            _, wall, train, report = _run(folder, tmp / f"stop_{order}{bug}", env=env)
            _, full_wall, full, _ = _run(folder, tmp / f"full_{order}{bug}", "--no-early-stop", env=env)
            run, div = train["run"], report["first_divergence"] or {}
            stopped = f"stopped at step {run['steps_done']} of {run['steps']} ({run['stopped']['why']})" \
                if run["stopped"] else "NOT STOPPED"
            print(f"  {bug:16s} {stopped}; located {div.get('where')} {div.get('layer') or ''} step {div.get('step')}; "
                  f"wall {wall:.1f} s vs {full_wall:.1f} s to the end ({1 - wall / full_wall:.0%} saved); training "
                  f"{run['train_s']} s vs {full['run']['train_s']} s")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=6)
    ap.add_argument("--epochs", type=int, default=3, help="of the seeds' runs (the example's: 3)")
    ap.add_argument("--skip-mistakes", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        seeds(Path(tmp), args.seeds, args.epochs)
        if not args.skip_mistakes:
            mistakes(Path(tmp))


if __name__ == "__main__":
    main()
