"""The two worker processes: start, call both at once, wait on sentinels, close for sure."""

from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import multiprocess as mp
from multiprocess.connection import wait

from harness.errors import RemoteTraceback, UsageError, WorkerError
from harness.protocol import Failure, Reply, Request, make_shm_dir, pack, sweep_stale_shm_dirs, unpack

CLOSE_GRACE_S = 5.0
# how long a failed rank's peers get to show that one of them died first (and caused it); the wait
# ends as soon as every peer has either died or answered
PEER_DEATH_GRACE_S = 1.0
# how long a worker that did not answer in time gets to write its stack (faulthandler on SIGUSR1)
STACK_GRACE_S = 2.0
TIMEOUT_HINT = "raise --timeout if the model is just slow"


WORKER_ENTRY = "backends.worker"  # started by name: the coordinator never imports backends code


@dataclass
class WorkerSpec:
    name: str  # "torch" | "paddle" | "torch.1" (rank 1 of a data-parallel run) ...
    options: dict  # threads, device, env, ... (see the entry module's main)
    framework: str = ""  # defaults to name
    entry: str = WORKER_ENTRY  # module whose main(framework, conn, options) serves requests


def _enter(entry: str, framework: str, conn, options: dict) -> None:
    """The child's first code: imports its entry module by name there, never here."""
    importlib.import_module(entry).main(framework, conn, options)


@contextlib.contextmanager
def _main_module_hidden():
    """Spawn re-runs the parent's __main__ in each child unless it has no file or spec. Workers
    need nothing from it (their entry is backends.worker.main), and re-running it would execute
    a user's unguarded script, or the whole CLI, once more in every worker."""
    main = sys.modules.get("__main__")
    saved = {k: main.__dict__.pop(k) for k in ("__file__", "__spec__") if main is not None and k in main.__dict__}
    if main is not None and "__spec__" in saved:
        main.__spec__ = None
    try:
        yield
    finally:
        if main is not None:
            main.__dict__.update(saved)


class _Worker:
    def __init__(self, ctx, spec: WorkerSpec, shm_dir):
        self.name, self.framework = spec.name, spec.framework or spec.name
        self.fault_file = Path(shm_dir) / f"faults-{spec.name}.txt"  # the worker's faulthandler output
        self.conn, child = ctx.Pipe()
        options = dict(spec.options, shm_dir=str(shm_dir), fault_file=str(self.fault_file))
        self.process = ctx.Process(
            target=_enter,
            args=(spec.entry, self.framework, child, options),
            name=f"reprod-{spec.name}-worker",
            daemon=True,
        )
        with _main_module_hidden():
            self.process.start()
        child.close()  # so a dead child shows as EOF on our end
        self.seconds = 0.0


class WorkerGroup:
    """start(), then any number of call({...}), then close() (always, in a finally).

    Every call waits on the pipes *and* the process sentinels with a deadline, so a worker
    that raises, dies or hangs ends the wait; then every worker is stopped (SIGTERM to its
    process group, then kill) and the root cause is raised as WorkerError with the worker's
    traceback, or its Python stack from faulthandler (a crash; a hang, asked for by SIGUSR1).
    """

    def __init__(self, specs: list[WorkerSpec], timeout: float):
        self.specs, self.timeout = specs, timeout
        self.workers: dict[str, _Worker] = {}
        self.shm_dir = None

    @property
    def names(self) -> list:
        return [spec.name for spec in self.specs]

    def start(self) -> None:
        ctx = mp.get_context("spawn")  # never fork: CUDA and thread pools do not survive it
        sweep_stale_shm_dirs()
        self.shm_dir = make_shm_dir()
        try:
            for spec in self.specs:
                self.workers[spec.name] = _Worker(ctx, spec, self.shm_dir)
        except BaseException:
            self.close()
            raise

    def call(self, requests: dict[str, Request], timeout: float | None = None, hint: str = TIMEOUT_HINT) -> dict:
        """Send each worker its request, wait for all replies at once; returns name -> value.
        timeout (default: the group's) and hint (how to raise it) word a timeout's message."""
        limit = timeout or self.timeout
        deadline = time.monotonic() + limit
        try:
            for name, req in requests.items():
                worker = self.workers[name]
                kwargs = self._pack(req.kwargs)
                try:
                    worker.conn.send(Request(req.op, kwargs))
                except (BrokenPipeError, ConnectionError, OSError):
                    self._raise_dead(worker, req.op)
            pending = {name: self.workers[name] for name in requests}
            results = {}
            while pending:
                handles = {w.conn: w for w in pending.values()}
                handles.update({w.process.sentinel: w for w in pending.values()})
                ready_now = wait(list(handles), timeout=max(0.0, deadline - time.monotonic()))
                if not ready_now:  # a reply that came at the deadline was read first: only the silent are blamed
                    raise timed_out(list(pending.values()), requests[next(iter(pending))].op, limit, hint)
                for ready in ready_now:
                    worker = handles[ready]
                    if worker.name not in pending:
                        continue
                    try:
                        results[worker.name] = self._receive(worker, requests[worker.name].op)
                    except WorkerError as err:
                        raise self._root_cause(err, worker, pending, requests[worker.name].op)
                    del pending[worker.name]
            return results
        except BaseException:
            self.close(graceful=False)  # one broke: stop the rest now
            raise
        finally:
            self._sweep_requests()

    def _pack(self, kwargs: dict) -> dict:
        """Large arrays into shared memory; a full /dev/shm is said as such, not as a dead worker."""
        try:
            return pack(kwargs, self.shm_dir)
        except OSError as exc:
            why = exc.strerror or f"{exc}: is it full?"  # numpy's tofile says only "N requested and 0 written"
            raise UsageError(f"{exc.filename or self.shm_dir}: cannot write it: {why} (shared memory "
                             f"for arrays of 1 MiB or more: free space in {self.shm_dir.parent})") from None

    def _receive(self, worker: _Worker, op: str):
        try:
            msg = worker.conn.recv() if worker.conn.poll() else None
        except (EOFError, OSError):
            msg = None
        if msg is None:
            self._raise_dead(worker, op)
        if isinstance(msg, Failure):
            err = WorkerError(worker.name, f"'{op}' failed: {msg.exc_type}: {msg.message}", msg.traceback,
                              exc_type=msg.exc_type, exc_message=msg.message)
            raise err from RemoteTraceback(msg.traceback)
        assert isinstance(msg, Reply)
        worker.seconds += msg.seconds
        return unpack(msg.value, consume=True)

    def _root_cause(self, err: WorkerError, failed: _Worker, pending: dict, op: str) -> WorkerError:
        """A rank whose peer died fails in its collective ("connection closed by peer"), or aborts
        in it (gloo's uncaught IoException: SIGABRT), at about the moment the peer's death shows:
        the dead peer is the cause, whichever was seen first, and it is named before the peer."""
        peers = [w for w in pending.values() if w is not failed and w.framework == failed.framework]
        if not peers or not (err.exc_type is not None or _aborted(failed)):
            return err  # no peer, or a death of its own (a segfault, an exit, a kill)
        deadline = time.monotonic() + PEER_DEATH_GRACE_S
        while time.monotonic() < deadline and not all(w.conn.poll() or not w.process.is_alive() for w in peers):
            wait([w.process.sentinel for w in peers] + [w.conn for w in peers], timeout=0.05)
        dead = [w for w in peers if not w.process.is_alive() and not self._has_reply(w)]
        for w in sorted(dead, key=_aborted):  # a peer that died of its own accord before one that aborted
            if _aborted(w) and _aborted(failed):
                break
            try:
                self._raise_dead(w, op)
            except WorkerError as cause:
                stack = cause.remote_traceback or ""
                cause.remote_traceback = f"{cause} first; {stack}after it, {err}:\n{err.remote_traceback or ''}"
                return cause
        return err

    @staticmethod
    def _has_reply(worker: _Worker) -> bool:
        """A message waits in the pipe (a closed pipe polls readable too, but holds none)."""
        try:
            return worker.conn.poll() and worker.conn.recv() is not None
        except (EOFError, OSError):
            return False

    @staticmethod
    def _raise_dead(worker: _Worker, op: str):
        worker.process.join(1.0)
        code = worker.process.exitcode
        how = "still running" if code is None else f"exit code {code}" if code >= 0 else f"killed by signal {-code}"
        stack = read_faults(worker)  # faulthandler's report: the Python stack at a fatal signal
        raise WorkerError(worker.name, f"died during '{op}' ({how})",
                          f"{worker.name} worker's Python stack when it died:\n{stack}" if stack else None)

    def _sweep_requests(self) -> None:
        """Request arrays were read by now (or never will be): drop their segments."""
        if self.shm_dir and os.path.isdir(self.shm_dir):
            for entry in os.scandir(self.shm_dir):
                if entry.name.endswith(".npy"):
                    os.unlink(entry.path)

    def seconds(self, name: str) -> float:
        return self.workers[name].seconds if name in self.workers else 0.0

    def close(self, graceful: bool = True) -> None:
        """Ask politely (graceful), then SIGTERM each worker's process group, then kill; never
        leaves a child behind, nor a process the pair's code started."""
        workers = list(self.workers.values())
        for w in workers:
            if graceful and w.process.is_alive():
                try:
                    w.conn.send(None)  # shutdown
                except (OSError, BrokenPipeError):
                    pass
        deadline = time.monotonic() + (CLOSE_GRACE_S if graceful else 0.0)
        for w in workers:
            w.process.join(max(0.0, deadline - time.monotonic()))
        for w in workers:
            if w.process.is_alive():
                _signal_group(w, signal.SIGTERM)
        for w in workers:
            w.process.join(2.0)
            if w.process.is_alive():
                w.process.kill()
                w.process.join(2.0)
        for w in workers:
            _signal_group(w, signal.SIGKILL)  # what the user's code started (a server, a data loader) ends too
            w.conn.close()
        self.workers.clear()
        if self.shm_dir:
            shutil.rmtree(self.shm_dir, ignore_errors=True)
            self.shm_dir = None


def _aborted(worker: _Worker) -> bool:
    return worker.process.exitcode == -signal.SIGABRT


def read_faults(worker: _Worker, start: int = 0) -> str:
    """faulthandler's report from `start` on, less its list of loaded extension modules (noise)."""
    try:
        with open(worker.fault_file, errors="replace") as f:
            f.seek(start)
            text = f.read()
    except OSError:
        return ""
    return "".join(line for line in text.splitlines(keepends=True) if not line.startswith("Extension modules:"))


def _fault_size(worker: _Worker) -> int:
    try:
        return os.path.getsize(worker.fault_file)
    except OSError:
        return 0


def timed_out(silent: list, op: str, limit: float, hint: str) -> WorkerError:
    """The workers that did not answer, blamed with the stack each was in (faulthandler on SIGUSR1)."""
    sizes = {w.name: _fault_size(w) for w in silent}
    for w in silent:
        with contextlib.suppress(OSError):
            os.kill(w.process.pid, signal.SIGUSR1)
    deadline = time.monotonic() + STACK_GRACE_S
    while time.monotonic() < deadline and any(_fault_size(w) == sizes[w.name] for w in silent if w.process.is_alive()):
        time.sleep(0.05)
    time.sleep(0.05)  # the dump is written in pieces: let the last one land
    stacks = [f"{w.name} worker was here when it did not answer:\n{text}" for w in silent
              if (text := read_faults(w, sizes[w.name]).strip())]
    return WorkerError(", ".join(w.name for w in silent), f"no answer to '{op}' within {limit:.0f} s ({hint})",
                       "\n".join(stacks) + "\n" if stacks else None)


def _signal_group(worker: _Worker, sig: int) -> None:
    """The worker's process group (its pid: it calls setpgrp first thing), children included."""
    pid = worker.process.pid
    if pid is None:
        return
    try:
        if os.getpgid(pid) != pid:  # not (yet) its own group: signal the worker alone
            os.kill(pid, sig)
            return
    except ProcessLookupError:
        pass  # reaped already; its children may still hold the group
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
