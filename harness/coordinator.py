"""A whole run, start to end: workers up (harness/session.py), the checks in the guide's order
(harness/checks/), localization on a failure (harness/locate/), then report.json. Also the
`convert` command's run: workers up, one checkpoint converted, workers down."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Callable

from harness import checkpoints, locate
from harness.artifacts import ArtifactWriter
from harness.checks import CHECKS
from harness.checks.parallel import dp_equivalence
from harness.config import RunConfig
from harness.errors import UsageError
from harness.keys import Kind
from harness.outdir import OutFolder
from harness.protocol import SIDES
from harness.report import Divergence, RunReport
from harness.session import RunOptions, Session


def run(cfg: RunConfig, opts: RunOptions, progress: Callable[[str], None] = lambda msg: None) -> RunReport:
    """The whole run into opts.out_dir: locked for the run, written in a staging folder beside it
    that replaces it only once report.json is written (harness/outdir.py)."""
    unsupported = [c for c in cfg.checks if c not in CHECKS]
    if unsupported:
        raise UsageError(f"{cfg.source}: checks {unsupported} are not available in this version")
    with OutFolder(opts.out_dir) as folder:
        report = _run(cfg, opts, progress, writer=ArtifactWriter(folder.staging, shown=folder.path))
        folder.commit()
    return report


def _run(cfg: RunConfig, opts: RunOptions, progress: Callable[[str], None], *, writer: ArtifactWriter) -> RunReport:
    started = time.perf_counter()
    session = Session(cfg, opts, progress, writer=writer)
    report = RunReport(cfg.name)
    located = None
    try:
        session.start()
        for name in cfg.checks:
            progress(f"{name} check")
            report.checks.append(CHECKS[name](session))
        if opts.dp_equivalence:
            progress("dp equivalence: N ranks vs 1 rank in each framework")
            report.checks.append(dp_equivalence(session))
        if opts.locate or not all(c.passed for c in report.checks):
            progress("locating the first divergence (hooks on every module)")
            located = locate.locate(trace_context(session), report.checks, always=opts.locate)
    finally:
        timing = {side: round(session.seconds(side), 3) for side in SIDES}
        session.close()
    report.environment = session.environment()
    report.timing = {"wall_s": round(time.perf_counter() - started, 3),
                     "torch_s": timing["torch"], "paddle_s": timing["paddle"]}
    report.first_divergence = first_divergence(report.checks)
    if located is not None:
        locate.apply(located, report)
    session.writer.report(report)
    return report


def trace_context(session: Session) -> locate.Context:
    return locate.Context(cfg=session.cfg, call=session.call, batch=session.data.batch, infos=session.infos,
                          plan=session.plan, to_paddle=session.to_paddle, adaptive=session.adaptive(),
                          dropout=session.dropout())


def first_divergence(checks: list) -> Divergence | None:
    for check in checks:
        if not check.passed:
            bad = check.failing
            if not bad:
                return Divergence(check.name, "check", detail=check.why)
            key = bad[0]
            step = key.id.step if key.id.kind is Kind.LOSS else None
            return Divergence(check.name, "output", step=step, detail=f"{key.key}: {key.reason}")
    return None


def convert_checkpoint(cfg: RunConfig, *, source: Path, target: Path, timeout: float, startup_timeout: float,
                       progress: Callable[[str], None]) -> str:
    """The pair's workers started for one conversion; returns the side of the file written."""
    with tempfile.TemporaryDirectory() as scratch:
        opts = RunOptions(out_dir=Path(scratch), timeout=timeout, startup_timeout=startup_timeout)
        session = Session(cfg, opts, progress)
        try:
            session.start()
            progress(f"converting {source.name}")
            return checkpoints.convert(session, source.resolve(), target.resolve())
        finally:
            session.close()
