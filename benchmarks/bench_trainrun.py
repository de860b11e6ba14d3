"""The training run against what it replaces, printed as ratios from one run: the two plain Step 5
training scripts (benchmarks/plain_train.py: one framework each, its own data, optimizer and
evaluations) run one after the other, and at once, against `reprod-harness run --checks train`
training both sides side by side with the curves compared as they come.

The plain scripts get the threads the harness gives its workers: one after the other, each the
machine's cores; at once, half each (the harness: half each, a worker taking over the cores of one
that has finished).

Start-up (importing both frameworks) costs each side seconds whatever the run's length; --epochs N
runs the pair for N epochs instead of its own (a copy of its folder), so the ratio shows what a long
run costs.

Usage: python benchmarks/bench_trainrun.py [PAIR_TOML] [--epochs N]   (default: examples/digits/pair.toml)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLAIN = ROOT / "benchmarks" / "plain_train.py"


def _plain(toml: Path, side: str, threads: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(PLAIN), str(toml), side, str(threads)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, cwd=ROOT)


def _result(proc: subprocess.Popen) -> dict:
    out, _ = proc.communicate(timeout=1800)
    return json.loads(out.strip().splitlines()[-1])


def _longer(toml: Path, epochs: int, tmp: Path) -> Path:
    folder = shutil.copytree(toml.parent, tmp / "pair")
    text, found = re.subn(r"(?m)^epochs = \d+", f"epochs = {epochs}", toml.read_text())
    if not found:
        raise SystemExit(f"{toml}: no [train] epochs line to change")
    (folder / toml.name).write_text(text)
    return folder / toml.name


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("toml", nargs="?", type=Path, default=ROOT / "examples" / "digits" / "pair.toml")
    ap.add_argument("--epochs", type=int)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        toml = args.toml.resolve()
        _compare(_longer(toml, args.epochs, Path(tmp)) if args.epochs else toml)


def _compare(toml: Path) -> None:
    cores = len(os.sched_getaffinity(0))
    start = time.perf_counter()
    alone = [_result(_plain(toml, side, cores)) for side in ("torch", "paddle")]
    sequential = time.perf_counter() - start
    start = time.perf_counter()
    procs = [_plain(toml, side, max(1, cores // 2)) for side in ("torch", "paddle")]
    together_runs = [_result(p) for p in procs]
    together = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        run = subprocess.run([sys.executable, "-m", "harness", "run", str(toml), "--checks", "train", "-q",
                              "--out", str(Path(tmp) / "o")], cwd=ROOT, capture_output=True, text=True, timeout=3600)
        harness = time.perf_counter() - start
        report = json.loads((Path(tmp) / "o" / "report.json").read_text())
    train = next(c for c in report["checks"] if c["name"] == "train")
    print(f"pair: {toml}  ({cores} cores)")
    for label, runs in (("one after the other", alone), ("at once", together_runs)):
        print(f"plain scripts {label}: " + ", ".join(f"{r['framework']} {r['wall_s']} s (training "
                                                    f"{r['train_s']} s, accuracy {r['accuracy']})" for r in runs))
    print(f"  wall: one after the other {sequential:.1f} s, at once {together:.1f} s")
    print(f"reprod-harness run --checks train: {harness:.1f} s wall (exit {run.returncode}; its train check trained and "
          f"evaluated for {train['run']['train_s']} s, {train['run']['steps_done']} steps; the rest is start-up and "
          f"{'float64 arbitration' if train.get('arbitration') or any(e.get('arbitrated') for e in train['run']['evaluations']) else 'the report'})")
    print(f"ratio harness / plain one after the other: {harness / sequential:.2f}")
    print(f"ratio harness / plain at once: {harness / together:.2f}")


if __name__ == "__main__":
    main()
