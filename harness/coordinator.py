"""The coordinator: makes the data, drives both workers at once, diffs, decides, writes."""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from harness import weights
from harness.config import RunConfig
from harness.data import BatchSource
from harness.diff import CheckResult, compare_dicts
from harness.errors import UsageError
from harness.process import WorkerGroup, WorkerSpec
from harness.protocol import Request
from harness.report import ArtifactWriter, Divergence, RunReport

SIDES = ("torch", "paddle")


@dataclass
class RunOptions:
    out_dir: Path
    timeout: float = 900.0
    device: str = "auto"  # auto | cpu | gpu
    threads: int | None = None  # per worker; None: half the cores each


def worker_threads(requested: int | None) -> int:
    return requested or max(1, (os.cpu_count() or 2) // 2)


class Session:
    """One run: both workers up, weights shared, then any sequence of checks."""

    def __init__(self, cfg: RunConfig, opts: RunOptions, progress: Callable[[str], None]):
        self.cfg, self.opts, self.progress = cfg, opts, progress
        self.data = BatchSource(cfg)
        self.writer = ArtifactWriter(opts.out_dir)
        self.plan: weights.Plan | None = None
        self.infos: dict = {}
        options = {"threads": worker_threads(opts.threads), "device": opts.device}
        self.group = WorkerGroup([WorkerSpec(side, options) for side in SIDES], opts.timeout)

    def both(self, op: str, **kwargs) -> dict:
        return self.group.call({side: Request(op, kwargs) for side in SIDES})

    def one(self, side: str, op: str, **kwargs):
        return self.group.call({side: Request(op, kwargs)})[side]

    # ------------------------------------------------------------------ set-up
    def start(self) -> None:
        self.data.batch(0)  # a broken make_batch is a usage error: find it before any process starts
        self.progress("starting the torch and paddle workers")
        self.group.start()
        self.infos = self.both("setup", cfg=self.cfg.to_wire())
        self.progress("sharing the torch initial weights with paddle")
        state = self.one("torch", "export_state")
        if self.infos["paddle"]["custom_mapping"]:
            self.one("paddle", "import_state", state=state, raw=True)
            self.writer.text("weight_map.txt", "converted by the pair's torch_to_paddle(state)\n")
        else:
            self.plan = weights.plan(self.infos["torch"]["modules"], self.infos["paddle"]["modules"])
            self.one("paddle", "import_state", state=self.plan.to_paddle(state))
            self.writer.text("weight_map.txt", self.plan.table())

    def close(self) -> None:
        self.group.close()

    # ------------------------------------------------------------------ checks
    def check_forward(self) -> CheckResult:
        out = self.both("forward", batch=self.data.batch(0))
        return self._record("forward", out["torch"], out["paddle"])

    def check_loss(self) -> CheckResult:
        out = self.both("loss", batch=self.data.batch(0))
        return self._record("loss", out["torch"], out["paddle"])

    def check_backward(self) -> CheckResult:
        iters = self.cfg.train.iters
        out = self.both("train", batches=self.data.batches(range(iters)), mode=self.cfg.train.mode,
                        total_steps=self.cfg.total_steps)
        per_step = {side: {f"loss_{i}": v for i, v in enumerate(out[side]["loss"])} for side in SIDES}
        return self._record("backward", per_step["torch"], per_step["paddle"])

    def _record(self, name: str, ref: dict, other: dict) -> CheckResult:
        result = compare_dicts(name, ref, other, self.cfg.tolerance)
        self.writer.check(result, ref, other)
        return result

    def environment(self) -> dict:
        env = {"python": platform.python_version(), "numpy": np.__version__}
        for side in SIDES:
            info = self.infos.get(side, {})
            env[side] = info.get("version")
        env["devices"] = {side: self.infos.get(side, {}).get("device") for side in SIDES}
        return env


CHECK_METHODS = {
    "forward": Session.check_forward,
    "loss": Session.check_loss,
    "backward": Session.check_backward,
}


def first_divergence(checks: list) -> Divergence | None:
    for check in checks:
        if not check.passed:
            bad = check.failing
            if not bad:
                return Divergence(check.name, "check", detail=check.why)
            key = bad[0]
            step = int(key.key.split("_")[-1]) if key.key.startswith("loss_") else None
            return Divergence(check.name, "output", step=step, detail=f"{key.key}: {key.reason}")
    return None


def run(cfg: RunConfig, opts: RunOptions, progress: Callable[[str], None] = lambda msg: None) -> RunReport:
    unsupported = [c for c in cfg.checks if c not in CHECK_METHODS]
    if unsupported:
        raise UsageError(f"{cfg.source}: checks {unsupported} are not available in this version")
    started = time.perf_counter()
    session = Session(cfg, opts, progress)
    report = RunReport(cfg.name, Path(opts.out_dir))
    try:
        session.start()
        for name in cfg.checks:
            progress(f"{name} check")
            report.checks.append(CHECK_METHODS[name](session))
    finally:
        timing = {side: round(session.group.seconds(side), 3) for side in SIDES}
        session.close()
    report.environment = session.environment()
    report.timing = {"wall_s": round(time.perf_counter() - started, 3),
                     "torch_s": timing["torch"], "paddle_s": timing["paddle"]}
    report.first_divergence = first_divergence(report.checks)
    session.writer.report(report)
    return report
