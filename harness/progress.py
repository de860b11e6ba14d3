"""What a person sees while a run works: a spinner with the current step on a terminal, plain
timestamped lines otherwise, nothing when quiet."""

from __future__ import annotations

import time

from rich.console import Console


class Progress:
    def __init__(self, console: Console, quiet: bool):
        self.console, self.quiet = console, quiet
        self.start = time.perf_counter()
        self.status = None

    def __enter__(self):
        if not self.quiet and self.console.is_terminal:
            self.status = self.console.status("starting")
            self.status.__enter__()
        return self

    def __call__(self, message: str) -> None:
        elapsed = time.perf_counter() - self.start
        if self.quiet:
            return
        if self.status is not None:
            self.status.update(f"[{elapsed:5.1f}s] {message}")
        else:
            self.console.print(f"[{elapsed:5.1f}s] {message}", highlight=False)

    def __exit__(self, *exc):
        if self.status is not None:
            self.status.__exit__(*exc)
