"""What can be checked on a machine with NVIDIA cards and a CUDA build of torch, but no paddle.

1. environment: torch, its CUDA build, the cards it sees.
2. worker protocol: a torch worker on cuda:0 against the same worker on CPU, driven as the
   coordinator drives them (setup, weights through shared memory, forward, training steps, the
   same steps again). Without CUDA the "gpu" worker falls back to CPU: the GPU comparison is
   skipped and the two CPU workers must agree exactly (a self-test of the protocol).
3. in-process: the settings torch's Runner puts in force (TF32 off, deterministic algorithms),
   a float32 matmul showing TF32 off on the card, the peak GPU memory of setup + training.
4. nccl: N ranks of torch DDP on N cards, each ending with the same parameters.

One line per check (PASS / FAIL / SKIP name: numbers or reason), then a summary; exit 1 when a
check failed. Usage: bash benchmarks/gpu_check.sh [--require-cuda]
"""

from __future__ import annotations

import argparse
import collections
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from backends.worker import configure_environment
from harness.config import parse
from harness.errors import WorkerError
from harness.pair.batches import BatchSource
from harness.session import ADAPTIVE
from harness.verdict import keys, rules
from harness.verdict.diff import CheckResult, compare_dicts, fmt
from harness.verdict.keys import Kind
from harness.verdict.tolerance import Tolerance
from harness.workers import ranks
from harness.workers.process import WorkerGroup, WorkerSpec
from harness.workers.protocol import SHM_MIN_BYTES, Op, Request, SharedArray, nbytes

# Tensors above the 1 MiB shared-memory threshold in weights, parameters and gradients.
PAIR = Path(__file__).resolve().parents[1] / "tests" / "pairs" / "wide" / "pair.toml"
OP_TIMEOUT_S = 240.0  # per op; the whole script runs under the 540 s of gpu_check.sh
# float32 on two devices sums in different orders (cuBLAS vs the CPU's BLAS; K = 256 and 1024
# here): against float64, this pair's CPU float32 parameters are off by 6e-8 mean, 2e-6 max
# after its 3 AdamW steps, and its losses by 1e-7, so GPU vs CPU stays near that. TF32 left on
# (10-bit mantissa) moves outputs by ~1e-4, wrong or stale weights by ~1e-1: a mean of 1e-5
# (max 1e-3) tells kernel round-off from a bug.
GPU_VS_CPU = Tolerance(1e-5)
# float32 matmul error relative to float64: ~1e-7 with full float32, ~3e-4 with TF32
TF32_OFF_BELOW = 1e-5
MATMUL_N = 2048
MAX_RANKS = 8


class Report:
    """Prints each check's line as it comes and counts the verdicts."""

    def __init__(self):
        self.counts = collections.Counter()
        self.start = time.monotonic()

    def line(self, status: str, name: str, detail: str) -> None:
        self.counts[status] += 1
        print(f"{status} {name}: {detail}", flush=True)

    def run(self, name: str, lines) -> None:
        """lines yields (status, name, detail); an exception fails the step it stopped, with the
        worker's traceback when a worker raised (one try on the GPU machine: show everything)."""
        try:
            for status, check, detail in lines:
                self.line(status, check, detail)
        except Exception as exc:  # noqa: BLE001 - any error is this check's failure, the next ones still run
            self.line("FAIL", name, f"{type(exc).__name__}: {exc}")
            if isinstance(exc, WorkerError) and exc.remote_traceback:
                print("    " + exc.remote_traceback.rstrip().replace("\n", "\n    "), flush=True)

    def summary(self) -> int:
        c = self.counts
        print(f"gpu_check: {c['PASS']} passed, {c['FAIL']} failed, {c['SKIP']} skipped "
              f"in {time.monotonic() - self.start:.1f} s", flush=True)
        return 1 if c["FAIL"] else 0


def verdict(passed: bool) -> str:
    return "PASS" if passed else "FAIL"


# ---------------------------------------------------------------------------- 1. environment
def cards() -> list:
    import torch

    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def environment(names: list, require_cuda: bool):
    import multiprocess
    import torch

    seen = f"{len(names)} device(s)" + (f": {', '.join(names)}" if names else "")
    detail = (f"python {platform.python_version()}, numpy {np.__version__}, multiprocess {multiprocess.__version__}, "
              f"torch {torch.__version__}, CUDA build {torch.version.cuda}, "
              f"cuda available {torch.cuda.is_available()}, {seen}")
    if require_cuda and not names:
        detail += " (--require-cuda: this machine was meant to have a card)"
    yield verdict(bool(names) or not require_cuda), "environment", detail


# ---------------------------------------------------------------------------- comparing replies
def compare(ref: dict, other: dict, tol: Tolerance | None, evidence: rules.Evidence | None = None) -> CheckResult:
    """tol None: exact, every key's max |d| 0 (the diff's float32 ulp floor would let rounding
    through). Otherwise the diff's rule, then the harness's update rules: under Adam an element
    whose gradient is rounding noise takes its own full step on each device."""
    result = compare_dicts("gpu_check", ref, other, tol or Tolerance(0.0, max=0.0))
    if tol is None:
        for key in result.keys:
            key.passed = key.max_abs == 0
    elif evidence is not None:
        rules.apply(result, ref, other, evidence)
    return result


def summarize(result: CheckResult) -> str:
    """max |d| per kind of key, then the first keys that failed."""
    worst = collections.defaultdict(float)
    for key in result.keys:
        kind = key.id.kind.value if key.id.kind is not Kind.VALUE else key.key
        worst[kind] = max(worst[kind], key.max_abs if key.max_abs is not None else float("inf"))
    text = ", ".join(f"{kind} max|d| {fmt(d)}" for kind, d in worst.items())
    released = [k.key for k in result.keys if k.rule]
    bad = [f"{k.key}: {k.reason or 'differs'}" for k in result.failing[:3]]
    return (text + (f"; passed by the update rules: {', '.join(released)}" if released else "")
            + (f"; {'; '.join(bad)}" if bad else "") + ("" if result.compared else "; nothing compared"))


# ---------------------------------------------------------------------------- 2. worker protocol
def worker_specs() -> list:
    return [WorkerSpec("gpu", {"threads": 1, "device": "gpu", "env": {"CUDA_VISIBLE_DEVICES": "0"}}, framework="torch"),
            WorkerSpec("cpu", {"threads": 1, "device": "cpu", "env": {}}, framework="torch")]


def worker_protocol(cfg, data: BatchSource):
    group = WorkerGroup(worker_specs(), OP_TIMEOUT_S)
    try:
        group.start()
        infos = group.call({name: Request(Op.SETUP, {"cfg": cfg.to_wire()}) for name in group.names})
        on_gpu = infos["gpu"]["device"].startswith("cuda")
        yield "PASS", "worker setup", f"'gpu' worker on {infos['gpu']['device']}, 'cpu' worker on {infos['cpu']['device']}"
        if not on_gpu:
            yield "SKIP", "worker gpu-vs-cpu", ("torch sees no CUDA device, so the 'gpu' worker runs on cpu: the steps "
                                                "below are a cpu-vs-cpu self-test of the protocol and must match exactly")
        yield from protocol_steps(group, cfg, data, on_gpu)
    finally:
        group.close()


def protocol_steps(group: WorkerGroup, cfg, data: BatchSource, on_gpu: bool):
    pair = "gpu-vs-cpu" if on_gpu else "cpu-vs-cpu (exact)"
    tol = GPU_VS_CPU if on_gpu else None
    # the same weights on both: the CPU worker's, as handles on its /dev/shm files, never pickled
    state = group.call({"cpu": Request(Op.EXPORT_STATE)})["cpu"]
    loaded = group.call({"gpu": Request(Op.LOAD_STATE, {"state": state})})["gpu"]["loaded"]

    out = group.call({name: Request(Op.FORWARD, {"batch": data.batch(0)}) for name in group.names})
    yield verdict_line(f"forward {pair}", compare(keys.values(out["cpu"]), keys.values(out["gpu"]), tol))

    train = {"batches": data.batches(range(cfg.train.iters)), "mode": "eval", "total_steps": cfg.total_steps}
    out = group.call({name: Request(Op.TRAIN, train) for name in group.names})
    ref, other = trained(out["cpu"]), trained(out["gpu"])
    evidence = rules.Evidence(state, out["cpu"]["grads"], out["gpu"]["grads"], cfg.optimizer.name in ADAPTIVE)
    yield verdict_line(f"train {pair} ({cfg.train.iters} {cfg.optimizer.name} steps)", compare(ref, other, tol, evidence))
    yield shared_memory(group, state, loaded, out["gpu"])

    # deterministic algorithms and the restore to the initial weights: the same steps, the same bits
    again = trained(group.call({"gpu": Request(Op.TRAIN, train)})["gpu"])
    yield verdict_line(f"repeat on the 'gpu' worker ({'cuda' if on_gpu else 'cpu'}, exact)", compare(other, again, None))


def shared_memory(group: WorkerGroup, state: dict, loaded: int, reply: dict) -> tuple:
    """Both ways: the exported state is all handles; a reply's tensors of 1 MiB or more are too."""
    big = {(part, k): v for part in ("params", "grads") for k, v in reply[part].items() if nbytes(v) >= SHM_MIN_BYTES}
    through = [k for k, v in big.items() if isinstance(v, SharedArray)]
    exported = [v for v in state.values() if isinstance(v, SharedArray)]
    mib = sum(v.nbytes for v in exported) / 2**20
    passed = len(exported) == len(state) == loaded and bool(big) and len(through) == len(big)
    return (verdict(passed), "shared memory",
            f"{len(exported)} of {len(state)} state tensors ({mib:.1f} MiB) from 'cpu' into 'gpu' as handles under "
            f"{group.shm_dir}, 'gpu' loaded {loaded}; {len(through)} of {len(big)} trained tensors of 1 MiB or more "
            "came back the same way")


def trained(reply: dict) -> dict:
    return {**keys.losses(reply["loss"]), **keys.named(Kind.PARAM, reply["params"]),
            **keys.named(Kind.GRAD, reply["grads"])}


def verdict_line(name: str, result: CheckResult) -> tuple:
    return verdict(result.passed), name, summarize(result)


# ---------------------------------------------------------------------------- 3. in-process Runner
def in_process(cfg, data: BatchSource, cuda: bool):
    import torch

    from backends.torch.runner import Runner

    with tempfile.TemporaryDirectory(prefix="gpu-check-") as shm_dir:
        runner = Runner({"device": "gpu", "threads": 1, "shm_dir": shm_dir})
        yield settings(torch)
        if not cuda:
            reason = "no CUDA device"
            yield "SKIP", "tf32 matmul", f"{reason}: TF32 exists only on the card"
            yield "SKIP", "peak gpu memory", reason
            return
        yield tf32_matmul(torch)
        yield peak_memory(torch, runner, cfg, data)


def settings(torch) -> tuple:
    found = {"cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
             "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
             "deterministic algorithms": torch.are_deterministic_algorithms_enabled(),
             "cudnn.deterministic": torch.backends.cudnn.deterministic,
             "cudnn.benchmark": torch.backends.cudnn.benchmark}
    wanted = {"cuda.matmul.allow_tf32": False, "cudnn.allow_tf32": False, "deterministic algorithms": True,
              "cudnn.deterministic": True, "cudnn.benchmark": False}
    return (verdict(found == wanted), "runner settings",
            ", ".join(f"{k} {v}" + ("" if v == wanted[k] else f" (want {wanted[k]})") for k, v in found.items()))


def matmul_error(torch) -> float:
    """|a @ b - exact| / |exact| of a float32 matmul on the card, exact computed in float64."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    a, b = (torch.randn(MATMUL_N, MATMUL_N, device="cuda", generator=gen) for _ in range(2))
    exact = a.double() @ b.double()
    return float(torch.linalg.norm((a @ b).double() - exact) / torch.linalg.norm(exact))


def tf32_matmul(torch) -> tuple:
    """The error as the Runner leaves it, and with TF32 switched on for a moment to show the
    card would use it: the check can tell the two apart."""
    off = matmul_error(torch)
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        on = matmul_error(torch)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = False
    return (verdict(off < TF32_OFF_BELOW), "tf32 matmul",
            f"float32 {MATMUL_N}x{MATMUL_N} matmul error {fmt(off)} relative to float64 (below {fmt(TF32_OFF_BELOW)}); "
            f"with TF32 on it would be {fmt(on)}")


def peak_memory(torch, runner, cfg, data: BatchSource) -> tuple:
    torch.cuda.reset_peak_memory_stats()
    runner.handle(Op.SETUP, {"cfg": cfg.to_wire()})
    runner.handle(Op.TRAIN, {"batches": data.batches(range(cfg.train.iters)), "mode": "eval",
                             "total_steps": cfg.total_steps})
    params = list(runner.model.parameters())
    on_card = all(p.is_cuda for p in params)
    mib = sum(p.numel() * p.element_size() for p in params) / 2**20
    return (verdict(on_card), "peak gpu memory",
            f"{torch.cuda.max_memory_allocated() / 2**20:.1f} MiB allocated at most on {torch.cuda.get_device_name()} "
            f"for setup + {cfg.train.iters} training steps (parameters {mib:.1f} MiB"
            f"{'' if on_card else ', NOT on the card'})")


# ---------------------------------------------------------------------------- 4. nccl
def nccl_ranks(count: int, rows: int) -> int:
    """The most ranks, at most one per card and MAX_RANKS, that split a batch evenly."""
    return max(n for n in range(1, min(count, MAX_RANKS) + 1) if rows % n == 0)


def nccl(cfg, data: BatchSource, count: int):
    if count < 2:
        yield "SKIP", "nccl", f"{'1 card' if count else 'no CUDA device'}: an nccl group of N ranks needs N cards (N >= 2)"
        return
    rows = next(iter(data.batch(0).values())).shape[0]
    n = nccl_ranks(count, rows)
    if n < 2:
        yield "SKIP", "nccl", f"{count} cards but a batch of {rows} rows splits evenly over none of 2..{count} ranks"
        return
    layout = ranks.Layout(nprocs=n, devices=tuple(range(n)))
    ranks.validate(layout, rows)
    ports = ranks.free_ports(1 + n)
    names = ["torch"] + [f"torch.{r}" for r in range(1, n)]
    specs = [WorkerSpec(name, {"threads": 1, "device": "gpu", "env": ranks.rank_env("torch", r, layout, ports)},
                        framework="torch") for r, name in enumerate(names)]
    group = WorkerGroup(specs, OP_TIMEOUT_S)
    try:
        group.start()
        yield ranks_in_sync(group, cfg, data, layout)
    finally:
        group.close()


def ranks_in_sync(group: WorkerGroup, cfg, data: BatchSource, layout) -> tuple:
    """As the session does: rank 0's weights on every rank, each rank trains on its shard, DDP
    averages the gradients, so every rank ends with rank 0's parameters (harness/checks/parallel.py)."""
    names, n = group.names, layout.nprocs
    group.call({name: Request(Op.SETUP, {"cfg": cfg.to_wire()}) for name in names})
    state = group.call({names[0]: Request(Op.EXPORT_STATE)})[names[0]]
    group.call({name: Request(Op.LOAD_STATE, {"state": state}) for name in names[1:]})
    batches = data.batches(range(cfg.train.iters))
    out = group.call({name: Request(Op.TRAIN, {"batches": [ranks.shard(b, r, n) for b in batches],
                                               "mode": "eval", "parallel": True, "total_steps": cfg.total_steps})
                      for r, name in enumerate(names)})
    first = keys.named(Kind.PARAM, out[names[0]]["params"])
    results = [compare(first, keys.named(Kind.PARAM, out[name]["params"]), cfg.tolerance.backward) for name in names[1:]]
    bad = [f"rank {r}: {summarize(res)}" for r, res in enumerate(results, 1) if not res.passed]
    worst = max(k.max_abs if k.max_abs is not None else float("inf") for res in results for k in res.keys)
    return (verdict(not bad), f"nccl {n} ranks",
            f"{layout.comm_backend()} on cards {', '.join(map(str, layout.devices))}, {cfg.train.iters} DDP steps: "
            f"every rank's parameters against rank 0's, max|d| {fmt(worst)}" + (f"; {'; '.join(bad)}" if bad else ""))


# ---------------------------------------------------------------------------- main
def main(argv: list | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--require-cuda", action="store_true", help="fail when torch sees no card (on the GPU machine)")
    args = ap.parse_args(argv)
    # The in-process Runner gets a worker's environment (CUBLAS_WORKSPACE_CONFIG for deterministic
    # cuBLAS, one thread), set before torch is imported, as the worker sets it.
    configure_environment({"threads": 1})
    cfg = parse.load(PAIR)
    data = BatchSource(cfg)
    # made by the data worker (the pair's make_batch never runs here), then kept: the worker goes
    data.batches(range(cfg.train.iters))
    data.close()
    report = Report()
    names = cards()
    report.run("environment", environment(names, args.require_cuda))
    report.run("worker protocol", worker_protocol(cfg, data))
    report.run("in-process runner", in_process(cfg, data, bool(names)))
    report.run("nccl", nccl(cfg, data, len(names)))
    return report.summary()


if __name__ == "__main__":
    sys.exit(main())
