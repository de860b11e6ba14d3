"""What a person sees of a training run while it goes: on the console both curves' latest values, their
gap against the band, the steps done and an ETA (a status line on a terminal; off one, a plain line
every few seconds and one per evaluation); the same lines in <out>.training/progress.log; and that
folder's report.html with the curves so far, rewritten (atomically) at every evaluation and at
most every HTML_EVERY_S, which a browser reloads by itself."""

from __future__ import annotations

import json
import time

from harness.report import curves, html
from harness.report.artifacts import atomic_write, json_default
from harness.verdict.diff import fmt

HTML_EVERY_S = 10.0
LOG_EVERY_S = 10.0


class Live:
    """view() -> (the run check so far as report.json has it, each side's curves as arrays)."""

    def __init__(self, session, plan, keeper, view):
        self.progress, self.plan, self.keeper, self.view = session.progress, plan, keeper, view
        self.name = session.cfg.name
        self.started = time.perf_counter()
        self.start_step = 0  # where this process began (a resumed run's ETA counts its own steps)
        self._html_at = self._log_at = 0.0

    def eta(self, done: int) -> str:
        ran = done - self.start_step
        elapsed = time.perf_counter() - self.started
        if ran <= 0 or elapsed <= 0:
            return ""
        return f", ETA {(self.plan.total - done) * elapsed / ran:.0f} s"

    def chunk(self, records) -> None:
        done = records.steps
        t, p = records.loss["torch"][-1], records.loss["paddle"][-1]
        epoch = f" (epoch {done // self.plan.per_epoch + 1})" if self.plan.per_epoch else ""
        line = (f"train: step {done}/{self.plan.total}{epoch}: loss torch {t:.5g} paddle {p:.5g} (|d| {fmt(abs(t - p))})"
                f"{self._last_eval(records)}{self.eta(done)}")
        show = getattr(self.progress, "live", None) or self.progress
        show(line)
        now = time.perf_counter()
        if now - self._log_at >= LOG_EVERY_S:
            self._log_at = now
            self.keeper.log(line)
        if now - self._html_at >= HTML_EVERY_S:
            self.report(f"step {done} of {self.plan.total}")

    @staticmethod
    def _last_eval(records) -> str:
        if not records.evals:
            return ""
        e = records.evals[-1]
        return f"; eval {e['index']} {'in the band' if e['inside'] else 'OUTSIDE the band'}"

    def evaluation(self, entry: dict) -> None:
        parts = [f"{pt['series']} {pt['torch']:.5g}/{pt['paddle']:.5g} |d| {fmt(pt['gap'])}"
                 + (f" {'<=' if pt['inside'] else '>'} {fmt(pt['limit'])}" if pt["limit"] is not None else "")
                 for pt in entry["points"]]
        line = (f"train: eval {entry['index']} at step {entry['step']}: " + "; ".join(parts)
                + (": in the band" if entry["inside"] else ": OUTSIDE the band"))
        self.progress(line)
        self.keeper.log(line)
        self.report(f"step {entry['step']} of {self.plan.total}, evaluation {entry['index']}")

    def report(self, where: str) -> None:
        """The folder's report.html: the run so far, with a banner saying it is still going."""
        self._html_at = time.perf_counter()
        check_json, series = self.view()
        data = json.loads(json.dumps({"schema": 1, "name": self.name, "aligned": False, "checks": [check_json],
                                      "first_divergence": None, "environment": {},
                                      "timing": {"wall_s": round(time.perf_counter() - self.started, 1)},
                                      "notes": [], "warnings": []}, default=json_default))
        try:
            page = html.build(data, curves.run_curves(data["checks"][0]["run"], series),
                              live=f"training run in progress: {where}")
            atomic_write(self.keeper.folder / "report.html", page.encode())
        except OSError:
            pass  # a view of the run: it goes on without it
