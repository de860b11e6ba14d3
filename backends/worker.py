"""Worker entry point, run in a spawned child. Framework-free until it imports its one runner."""

from __future__ import annotations

import contextlib
import ctypes
import faulthandler
import importlib
import logging
import os
import signal
import sys
import time
import traceback
import warnings

_PR_SET_PDEATHSIG, _PR_SET_CHILD_SUBREAPER = 1, 36


def _prctl(option: int, value: int) -> None:
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(option, value)
        except OSError:
            pass


def die_with_parent(parent: int | None) -> None:
    """Linux: the kernel kills this process when its parent dies, so no worker is ever orphaned.
    The signal is armed only for a parent alive when it is set: one that died during the spawn
    (a SIGKILLed coordinator) shows as another parent pid, and the worker leaves at once."""
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    orphaned(parent)


def orphaned(parent: int | None) -> None:
    """Leave now, running nothing more, when the coordinator that started this worker is gone."""
    if parent is not None and os.getppid() != parent:
        os._exit(0)


def reap_for_the_run(tag: str | None) -> None:
    """Every process this worker's code starts stays below it, even one that leaves its process
    group and double-forks (child subreaper: orphans come here, not to init), so the coordinator
    finds the whole tree when it ends the run; and each carries the run's tag ("NAME=value") in
    its environment, so it is found even after this worker is gone (harness/workers/reaping.py)."""
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)
    if tag:
        name, _, value = tag.partition("=")
        os.environ[name] = value


def configure_environment(options: dict) -> None:
    """Before any framework import: thread pools and visible devices are read at import time."""
    threads = str(options.get("threads") or 1)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "CPU_NUM"):
        os.environ[var] = threads
    os.environ.update(options.get("env") or {})  # a data-parallel rank's identity and its card
    os.environ.setdefault("FLAGS_cudnn_deterministic", "1")
    os.environ.setdefault("FLAGS_embedding_deterministic", "1")
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    os.environ.setdefault("TORCHINDUCTOR_DETERMINISTIC", "1")
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


def _capture_logging() -> list:
    """What libraries log (transformers, paddleformers' coloured lines, paddle's own) goes to the
    report's notes with the logger's name, whatever handlers they set up themselves: every handler
    writing to this process's console records the message instead. Logs to files are left alone."""
    caught: list = []
    emit = logging.StreamHandler.emit

    def record(handler, entry):
        if isinstance(handler, logging.FileHandler) or not _to_console(handler.stream):
            return emit(handler, entry)
        try:
            message = entry.getMessage()
        except Exception:  # noqa: BLE001 - a library's bad format arguments
            message = str(entry.msg)
        caught.append(f"{entry.levelname} {entry.name}: {message} ({entry.pathname}:{entry.lineno})")

    logging.StreamHandler.emit = record
    return caught


def _to_console(stream) -> bool:
    try:
        return stream.fileno() in (1, 2)
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError and a ValueError
        return False


def capture_output(path: str | None) -> None:
    """What the pair or a library prints (print, progress bars, C++ logs) goes to the worker's own
    file, which the coordinator keeps in the artifacts: never over its live display, nor into its
    --json output on the shared stdout."""
    if not path:
        return
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.reconfigure(line_buffering=True)  # in order with the other stream, and kept at a crash


_fault_file = None  # kept open for the life of the process: faulthandler writes to its descriptor


def enable_fault_reports(path: str | None) -> None:
    """Python's stack into the worker's own error file on a fatal signal (segfault, abort, ...),
    and on SIGUSR1, which the coordinator sends to a worker that does not answer in time. Called
    again after the framework import, whose own handlers would otherwise replace these."""
    global _fault_file
    if not path:
        return
    if _fault_file is None:
        _fault_file = open(path, "a")  # noqa: SIM115 - must outlive this call
    faulthandler.disable()  # enable() does nothing while enabled: the handlers must be installed anew
    faulthandler.enable(_fault_file, all_threads=True)
    faulthandler.register(signal.SIGUSR1, _fault_file, all_threads=True, chain=False)


# A tiny process in the worker's group that outlives the worker by a moment: the kernel kills the
# worker outright (SIGKILL) when the coordinator dies, so nothing in the worker can end what the
# pair's code started; this one gets SIGTERM when the worker dies and ends every process carrying
# the run's tag (those that left the group too), then the whole group, itself too.
GUARDIAN = """
import ctypes, os, signal, sys
group, worker, tag = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3].encode()

def end(*_):
    for pid in (int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid()):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if tag and tag in f.read().split(b"\\0"):
                    os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    os.killpg(group, signal.SIGKILL)

signal.signal(signal.SIGTERM, end)
try:
    ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: told when the worker dies
except OSError:
    sys.exit(0)  # no glibc: no guardian (close() still ends the group, short of a SIGKILLed coordinator)
if os.getppid() != worker:
    end()  # it died before the line above
while True:
    signal.pause()
"""


def start_guardian(tag: str | None) -> None:
    if sys.platform.startswith("linux"):
        import subprocess

        subprocess.Popen([sys.executable, "-I", "-S", "-c", GUARDIAN, str(os.getpgrp()), str(os.getpid()), tag or ""],
                         stdin=subprocess.DEVNULL, close_fds=True)


def main(framework: str, conn, options: dict) -> None:
    die_with_parent(options.get("parent"))
    os.setpgrp()  # a group of its own: close() ends whatever the user's code started along with it
    reap_for_the_run(options.get("run_tag"))
    start_guardian(options.get("run_tag"))
    # a background group writing to a terminal with `stty tostop` would be stopped: write anyway
    signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the coordinator's to handle
    enable_fault_reports(options.get("fault_file"))
    capture_output(options.get("output_file"))
    configure_environment(options)
    from harness.pair import loader, stubs

    stubs.block(loader.blocked_roots(framework), f"{framework} worker")
    serve(framework, conn, options)
    # Skip the interpreter's teardown: the frameworks' destructors and atexit hooks take up to a
    # second at every close and serve nothing here (the coordinator removes what this worker made)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(0)


class CoreShare:
    """This worker's part of the CPU: the run's cores divided among the workers that have work now,
    so when one framework has finished its work the other takes over its cores rather than leaving
    them idle. `working` is a flag per worker in shared memory: set by the coordinator for every
    worker of a submission before it sends any request (so none reads the others as idle in the
    moment before their requests arrive), and by the worker for itself on each request; cleared
    by the worker only when no request is waiting in its pipe. Read at the start of each op and
    between its steps; without a budget (threads fixed by the user) the count never changes."""

    def __init__(self, working, slot: int, budget: int | None):
        self.working, self.slot, self.budget = working, slot, budget
        self.apply = lambda n: None  # the runner's set_threads, once the framework is imported
        self.current = 0

    def busy(self, now: bool) -> None:
        if self.budget:
            self.working[self.slot] = int(now)

    def update(self) -> None:
        if self.budget:
            n = max(1, self.budget // max(1, sum(self.working)))
            if n != self.current:
                self.apply(n)
                self.current = n


def serve(framework: str, conn, options: dict) -> None:
    from harness.workers.protocol import Failure, Progress, Reply, pack, unpack

    warned, logged = _capture_warnings(), _capture_logging()
    shm_dir, runner = options.get("shm_dir"), None
    cores = CoreShare(options.get("working"), options.get("slot", 0), options.get("thread_budget"))
    while True:
        try:
            if not conn.poll():
                cores.busy(False)
            msg = conn.recv()
        except (EOFError, OSError):  # coordinator gone
            return
        if msg is None:
            return
        orphaned(options.get("parent"))  # the coordinator died since: no more of the pair's code runs
        start = time.perf_counter()
        cores.busy(True)
        try:
            if runner is None:
                runner = _runner(framework, conn, options, cores, Progress)
            else:
                cores.update()
            value = runner.handle(msg.op, unpack(msg.kwargs, keep_handles=False))
            check_crossable(value, f"'{msg.op}' returned")
            reply = Reply(pack(value, shm_dir), time.perf_counter() - start, warned[:], logged[:])
            warned.clear()
            logged.clear()
        except BaseException as exc:  # noqa: BLE001 - everything goes back to the coordinator
            tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            reply = Failure(type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "", tb)
        try:
            conn.send(reply)
        except (BrokenPipeError, OSError):
            return


def _runner(framework: str, conn, options: dict, cores: CoreShare, progress_type):
    """The framework's runner, imported on the first request: its progress reports go to the
    coordinator and each step re-reads this worker's share of the cores."""
    runner = importlib.import_module(f"backends.{framework}.runner").Runner(options)
    enable_fault_reports(options.get("fault_file"))
    send = _progress_sender(conn, progress_type)

    def progress(done: int, total: int) -> None:
        send(done, total)
        cores.update()

    runner.progress = progress
    runner.between_kernels = cores.update
    cores.apply = runner.set_threads
    cores.current = int(options.get("threads") or 1)  # what the thread variables set at import
    cores.update()
    return runner


_PLAIN = (type(None), bool, int, float, str, bytes)
_CONTAINERS = (dict, list, tuple)


def check_crossable(value, where: str) -> None:
    """Only data crosses to the coordinator: the pipe pickles with dill, which would carry locks and
    lambdas across, where saving or comparing them then fails far from their cause. Builtin types
    only, never a subclass: unpickling torch's TorchVersion (a str) or a torch.Size (a tuple)
    imports torch into the coordinator."""
    import numpy as np

    from harness.workers.protocol import Deferred, SharedArray  # handles: arrays in shared memory, or made as sent

    if isinstance(value, (np.ndarray, np.generic)):
        if value.dtype.hasobject:
            raise TypeError(f"{where} is an object array, which cannot cross to the coordinator")
    elif isinstance(value, (*_PLAIN, *_CONTAINERS)) and type(value) not in (*_PLAIN, *_CONTAINERS):
        raise TypeError(f"{where} is a {type(value).__module__}.{type(value).__qualname__} (a subclass of "
                        f"{type(value).__mro__[1].__name__}), which cannot cross to the coordinator")
    elif isinstance(value, dict):
        for k, v in value.items():
            check_crossable(v, f"{where}[{k!r}]")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            check_crossable(v, f"{where}[{i}]")
    elif not isinstance(value, (*_PLAIN, SharedArray, Deferred)):
        raise TypeError(f"{where} is a {type(value).__module__}.{type(value).__qualname__}, "
                        "which cannot cross to the coordinator")
