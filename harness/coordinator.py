"""A whole run, start to end: workers up (harness/session.py), the checks in the guide's order
(harness/checks/), localization on a failure (harness/locate/), then report.json. Also the
`convert` command's run: workers up, one checkpoint converted, workers down."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from harness import trainrun
from harness.checks import CHECKS, PRECISION_FREE
from harness.checks.common import finish
from harness.checks.parallel import dp_equivalence
from harness.config.schema import RunConfig
from harness.errors import UsageError, WorkerError
from harness.report.artifacts import ArtifactWriter, json_default
from harness.report.runreport import Divergence, RunReport
from harness.safety.outdir import OutFolder
from harness.session import RunOptions, Session, environment, needs_models
from harness.verdict import rules
from harness.verdict.keys import Kind
from harness.workers.protocol import SIDES

if TYPE_CHECKING:  # localization, the HTML report and checkpoints load only when a run uses them:
    from harness import locate  # their imports are on every run's start-up path


def run(cfg: RunConfig, opts: RunOptions, progress: Callable[[str], None] = lambda msg: None) -> RunReport:
    """The whole run into opts.out_dir: locked for the run, written in a staging folder beside it
    that replaces it only once report.json is written (harness/safety/outdir.py)."""
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
    report = RunReport(cfg.name, out_dir=opts.out_dir)
    located = None
    try:
        session.start()
        steps = {name: check_steps(name) for name in session.cfg.checks}
        if opts.dp_equivalence:
            steps["dp_equivalence"] = dp_equivalence.steps
        report.checks += run_checks(session, steps, progress)
        model_checks = [c for c in report.checks if c.name not in PRECISION_FREE]
        # a training run decides its own keys: it is never re-run in float64, and it localized itself
        failed = [c for c in model_checks if not c.passed and c.run is None]
        if failed:
            arbitrate(session, failed, steps, progress)
        first = next((c for c in model_checks if not c.passed), None)
        if first is not None and first.located is not None:
            located = first.located
        elif needs_models(session.cfg) and (opts.locate or first is not None):
            progress("locating the first divergence (hooks on every module)")
            from harness import locate

            located = locate.locate(trace_context(session), model_checks, always=opts.locate)
    finally:
        timing = {side: round(session.seconds(side), 3) for side in SIDES}
        session.close()
    report.environment = environment(session)
    report.weight_map = weight_map(session)
    report.notes += session.plan.notes if session.plan else []
    report.timing = {"wall_s": round(time.perf_counter() - started, 3),
                     "torch_s": timing["torch"], "paddle_s": timing["paddle"]}
    report.warnings += [f"{worker} worker: {text}" for text, worker in session.group.warnings.items()]
    report.warnings += [f"{worker} worker logged: {text}" for text, worker in session.group.logged.items()]
    report.warnings += worker_output(session)
    report.first_divergence = first_divergence(report.checks)
    if located is not None:
        from harness import locate

        locate.apply(located, report)
    _write_html(session.root_writer, report)
    session.root_writer.report(report)  # last: report.json exists only for a finished run
    return report


def check_steps(name: str):
    """A check's generator function: the train check is the training run's when [train] epochs or
    steps is given (harness/trainrun/, which runs the plain train check otherwise)."""
    return trainrun.train.steps if name == "train" else CHECKS[name].steps


def run_checks(session: Session, steps: dict, progress: Callable[[str], None]) -> list:
    """Every check's first requests are sent before any is judged: each worker runs through its
    queue at its own pace while the coordinator compares the checks that are done."""
    started = []
    for name, make in steps.items():
        gen = make(session)
        started.append((name, gen, session.submit(next(gen), label=name)))
    results = []
    for name, gen, submission in started:
        progress(f"{name} check")
        results.append(finish(gen, session.call, submission.wait()))
    return results


def arbitrate(session: Session, failed: list, steps: dict, progress: Callable[[str], None]) -> None:
    """float64 arbitration (harness/verdict/rules.py), check by check in the guide's order until
    one differs for real: that check again, both models in float64 from the same weights and
    batches, its keys then decided there. A check whose failure float64 cannot change (exact
    keys, shapes, NaN) differs for real without it; the checks after the first real difference
    are not re-run, their failures may follow from it. Where float64 cannot run, float32's own
    rules stand, and the report says so."""
    if not session.options.arbitrate:
        for check in failed:
            check.arbitration = "fallback: float64 arbitration is off (--float32-only)"
        return
    real = None
    for i, check in enumerate(failed):
        if real is not None:
            check.arbitration = f"not run: the {real.name} check differs for real; this one may fail as its consequence"
        elif rules.settled(check):
            check.arbitration, real = "not needed: keys that float64 cannot change differ", check
        elif not _arbitrate_one(session, check, steps, progress, rest=failed[i:]):
            return
        elif not check.passed:
            real = check


def _arbitrate_one(session: Session, check, steps: dict, progress: Callable[[str], None], *, rest: list) -> bool:
    """One check re-run in float64 and decided there; False when float64 could not run."""
    progress(f"float64 arbitration of {check.name}")
    try:
        if session.precision != "float64":
            session.use_precision("float64")
        wide = run_checks(session, {check.name: steps[check.name]}, progress)[0]
    except WorkerError as exc:
        for other in rest:
            other.arbitration = f"fallback: float64 could not run ({exc})"
        session.restart()
        return False
    rules.arbitrate(check, wide)
    return True


def _write_html(writer, report: RunReport) -> None:
    """report.html from the same JSON that report.json holds (so `report DIR --html` rewrites it
    identically). A failure to draw it must not cost the run its report.json: it becomes a note."""
    try:
        from harness.report import html

        html.write_html(writer.out_dir, json.loads(json.dumps(report.to_json(), default=json_default)))
    except Exception as exc:  # noqa: BLE001 - any bug in drawing; the verdict stands without it
        report.notes.append(f"report.html not written: {type(exc).__name__}: {exc}")


def worker_output(session: Session) -> list:
    """What each worker printed (the pair's prints, a library's progress bars and C++ logs), kept in
    the artifacts as worker_<name>.log rather than shown over the live display; a note points there."""
    notes = []
    for name, text in session.group.printed.items():
        session.root_writer.text(f"worker_{name}.log", text)
        notes.append(f"{name} worker printed {len(text.splitlines())} lines: kept in worker_{name}.log")
    return notes


def weight_map(session: Session) -> dict | None:
    """report.json's account of the weight pairing; None when set-up never got that far."""
    if session.plan is not None:
        return session.plan.to_json()
    if session.infos.get("paddle", {}).get("custom_mapping"):
        return {"custom": "torch_to_paddle", **(session.identity.to_json() if session.identity else {"pairs": []})}
    return None


def trace_context(session: Session) -> locate.Context:
    from harness import locate

    session.trace_call_order()
    steps = getattr(session.progress, "steps", None) or (lambda worker, label, done, total: None)
    return locate.Context(cfg=session.cfg, call=session.call, batch=session.data.batch, infos=session.infos,
                          plan=session.plan, to_paddle=session.to_paddle, adaptive=session.adaptive(),
                          dropout=session.dropout(), steps=steps)


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
                       progress: Callable[[str], None], interpreters: dict | None = None) -> str:
    """The pair's workers started for one conversion; returns the side of the file written."""
    with tempfile.TemporaryDirectory() as scratch:
        opts = RunOptions(out_dir=Path(scratch), timeout=timeout, startup_timeout=startup_timeout,
                          interpreters=interpreters or {})
        session = Session(cfg, opts, progress)
        try:
            session.start()
            progress(f"converting {source.name}")
            from harness.mapping import checkpoints

            return checkpoints.convert(session, source.resolve(), target.resolve())
        finally:
            session.close()
