"""Benchmarks of the coordinator's two design choices, printed as ratios from one run.

1. Side by side: both workers computing at once vs one after the other (the floor is
   max(T_torch, T_paddle), not the sum).
2. Shared memory: a large array sent to a worker through the /dev/shm folder vs pickled
   through the pipe.

Usage: python benchmarks/bench_workers.py [--zoo tiny_transformer] [--iters 20] [--mb 64]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from harness.config import parse
from harness.session import RunOptions, Session
from harness.workers import protocol
from harness.workers.protocol import SIDES, Op, Request


def _train(session: Session, iters: int, together: bool) -> float:
    kwargs = dict(batches=session.data.batches(range(iters)), mode="eval", total_steps=iters)
    start = time.perf_counter()
    if together:
        session.group.call({side: Request(Op.TRAIN, kwargs) for side in SIDES})
    else:
        for side in SIDES:
            session.group.call({side: Request(Op.TRAIN, kwargs)})
    return time.perf_counter() - start


def _send(session: Session, array: np.ndarray, through_shm: bool) -> float:
    saved = protocol.SHM_MIN_BYTES
    protocol.SHM_MIN_BYTES = 1 if through_shm else 1 << 62
    try:
        start = time.perf_counter()
        session.one("torch", Op.PING, payload=array)
        return time.perf_counter() - start
    finally:
        protocol.SHM_MIN_BYTES = saved


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", default="tiny_transformer")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--mb", type=int, default=64)
    args = ap.parse_args()

    cfg = parse.load_zoo(args.zoo)
    with tempfile.TemporaryDirectory() as tmp:
        session = Session(cfg, RunOptions(out_dir=Path(tmp)), progress=lambda m: None)
        try:
            session.start()
            _train(session, 2, True)  # warm-up: first-call allocations and lazy inits
            seq = min(_train(session, args.iters, False) for _ in range(2))
            par = min(_train(session, args.iters, True) for _ in range(2))
            print(f"train {args.iters} iters of {args.zoo}: one after the other {seq:.2f} s, "
                  f"side by side {par:.2f} s, ratio {seq / par:.2f}x")

            array = np.random.default_rng(0).standard_normal(args.mb * (1 << 20) // 4).astype(np.float32)
            _send(session, array, True)
            pipe = min(_send(session, array, False) for _ in range(3))
            shm = min(_send(session, array, True) for _ in range(3))
            print(f"send {args.mb} MiB to a worker: pipe {pipe * 1e3:.0f} ms, shared memory {shm * 1e3:.0f} ms, "
                  f"ratio {pipe / shm:.2f}x")
        finally:
            session.close()


if __name__ == "__main__":
    main()
