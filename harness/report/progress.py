"""What a person sees while a run works: a spinner with the current stage and, for multi-step
ops, each framework's step count and an ETA, fed by the workers as steps finish; plain
timestamped lines when stdout is not a terminal; nothing when quiet."""

from __future__ import annotations

import time
from dataclasses import dataclass

from rich.console import Console
from rich.markup import escape

PLAIN_EVERY_S = 10.0  # how often a non-terminal gets a step line for a long op


@dataclass
class _Steps:
    op: str
    done: int
    total: int
    first_done: int
    first_at: float

    def eta(self, now: float) -> float | None:
        if self.done <= self.first_done or now <= self.first_at:
            return None
        rate = (self.done - self.first_done) / (now - self.first_at)
        return (self.total - self.done) / rate


class Progress:
    def __init__(self, console: Console, quiet: bool):
        self.console, self.quiet = console, quiet
        self.start = time.perf_counter()
        self.status = None
        self.stage = "starting"
        self.frameworks: dict = {}  # framework -> _Steps of its current op (rank 0's)
        self._printed = self.start

    def __enter__(self):
        if not self.quiet and self.console.is_terminal:
            self.status = self.console.status("starting")
            self.status.__enter__()
        return self

    def __call__(self, message: str) -> None:
        """A new stage of the run."""
        self.stage = message
        if self.quiet:
            return
        if self.status is not None:
            self._show()
        else:
            self._plain(message)

    def live(self, message: str) -> None:
        """A stage that changes every few steps (a training run's latest values): shown at once on a
        terminal; off one, a line every PLAIN_EVERY_S at most."""
        self.stage = message
        if self.quiet:
            return
        if self.status is not None:
            self._show()
            return
        now = time.perf_counter()
        if now - self._printed >= PLAIN_EVERY_S:
            self._printed = now
            self._plain(message)

    def _plain(self, message: str) -> None:
        try:
            self.console.print(f"[{self._elapsed():5.1f}s] {escape(message)}", highlight=False)
        except OSError:  # the terminal went away: the run goes on without a display
            self.quiet = True

    def steps(self, worker: str, op: str, done: int, total: int) -> None:
        """A worker finished `done` of the `total` steps of `op` (rank 0 of each framework shown)."""
        if self.quiet or "." in worker:
            return
        now = time.perf_counter()
        current = self.frameworks.get(worker)
        if current is None or current.op != str(op) or done < current.done:
            self.frameworks[worker] = _Steps(str(op), done, total, done, now)
        else:
            current.done, current.total = done, total
        if self.status is not None:
            self._show()
        elif now - self._printed >= PLAIN_EVERY_S and self.line() != self.stage:
            self._printed = now
            self._plain(self.line())

    def line(self) -> str:
        """e.g. `train  torch 12/20  paddle 9/20  ETA 41 s` (ops that are still running)."""
        now = time.perf_counter()
        running = {fw: s for fw, s in self.frameworks.items() if s.done < s.total}
        if not running:
            return self.stage
        by_op: dict = {}
        for fw, s in running.items():
            by_op.setdefault(s.op, []).append(f"{fw} {s.done}/{s.total}")
        etas = [e for e in (s.eta(now) for s in running.values()) if e is not None]
        text = "  ".join(f"{op}  {'  '.join(parts)}" for op, parts in by_op.items())
        return text + (f"  ETA {max(etas):.0f} s" if etas else "")

    def _elapsed(self) -> float:
        return time.perf_counter() - self.start

    def _show(self) -> None:
        self.status.update(f"[{self._elapsed():5.1f}s] {escape(self.stage)}  {escape(self.line())}"
                           if self.line() != self.stage else f"[{self._elapsed():5.1f}s] {escape(self.stage)}")

    def __exit__(self, *exc):
        if self.status is not None:
            self.status.__exit__(*exc)
