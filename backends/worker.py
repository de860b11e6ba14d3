"""Worker entry point, run in a spawned child. Framework-free until it imports its one runner."""

from __future__ import annotations

import ctypes
import importlib
import os
import signal
import sys
import time
import traceback
import warnings


def die_with_parent() -> None:
    """Linux: the kernel kills this process when its parent dies, so no worker is ever orphaned."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass


def configure_environment(options: dict) -> None:
    """Before any framework import: thread pools and visible devices are read at import time."""
    threads = str(options.get("threads") or 1)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "CPU_NUM"):
        os.environ[var] = threads
    os.environ.update(options.get("env") or {})  # a data-parallel rank's identity and its card
    os.environ.setdefault("FLAGS_cudnn_deterministic", "1")
    os.environ.setdefault("FLAGS_embedding_deterministic", "1")
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    os.environ.setdefault("GLOG_minloglevel", "2")  # paddle's C++ info logs would bury the progress
    warnings.filterwarnings("ignore", message="No ccache found")  # paddle's import-time noise


def _progress_sender(conn, progress_type, every_s: float = 0.2):
    """Steps done of an op, sent at most every `every_s` (and at the last step): a live count for
    the console and a sign of life for the coordinator's deadline, at no measurable cost."""
    last = [0.0]

    def send(done: int, total: int) -> None:
        now = time.monotonic()
        if done == total or now - last[0] >= every_s:
            last[0] = now
            conn.send(progress_type(done, total))

    return send


def _capture_warnings() -> list:
    """Python warnings of the framework and the user's code go to the report's notes with their
    origin, never onto the coordinator's progress display (each location once, as by default)."""
    caught: list = []

    def show(message, category, filename, lineno, file=None, line=None):
        caught.append(f"{category.__name__}: {message} ({filename}:{lineno})")

    warnings.showwarning = show
    return caught


def main(framework: str, conn, options: dict) -> None:
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the coordinator's to handle
    configure_environment(options)
    from harness import pairfile, stubs
    from harness.protocol import Failure, Progress, Reply, pack, unpack

    stubs.block(pairfile.blocked_roots(framework), f"{framework} worker")
    warned = _capture_warnings()
    shm_dir = options.get("shm_dir")
    runner = None
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):  # coordinator gone
            return
        if msg is None:
            return
        start = time.perf_counter()
        try:
            if runner is None:
                module = importlib.import_module(f"backends.{framework}.runner")
                runner = module.Runner(options)
                runner.progress = _progress_sender(conn, Progress)
            value = runner.handle(msg.op, unpack(msg.kwargs, keep_handles=False))
            reply = Reply(pack(value, shm_dir), time.perf_counter() - start, warned[:])
            warned.clear()
        except BaseException as exc:  # noqa: BLE001 - everything goes back to the coordinator
            tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            reply = Failure(type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "", tb)
        try:
            conn.send(reply)
        except (BrokenPipeError, OSError):
            return
