"""The two worker processes: start, call both at once, wait on sentinels, close for sure."""

from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import sys
import time
from dataclasses import dataclass

import multiprocess as mp
from multiprocess.connection import wait

from harness.errors import RemoteTraceback, WorkerError
from harness.protocol import Failure, Reply, Request, make_shm_dir, pack, unpack

CLOSE_GRACE_S = 5.0
# how long a failed rank's peers get to show that one of them died first (and caused it)
PEER_DEATH_GRACE_S = 0.5


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
        self.name = spec.name
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(
            target=_enter,
            args=(spec.entry, spec.framework or spec.name, child, dict(spec.options, shm_dir=str(shm_dir))),
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
    that raises, dies or hangs ends the wait; then every worker is stopped (terminate, then
    kill) and the root cause is raised as WorkerError with the worker's traceback.
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
        self.shm_dir = make_shm_dir()
        try:
            for spec in self.specs:
                self.workers[spec.name] = _Worker(ctx, spec, self.shm_dir)
        except BaseException:
            self.close()
            raise

    def call(self, requests: dict[str, Request], timeout: float | None = None) -> dict:
        """Send each worker its request, wait for all replies at once; returns name -> value."""
        deadline = time.monotonic() + (timeout or self.timeout)
        try:
            for name, req in requests.items():
                worker = self.workers[name]
                try:
                    worker.conn.send(Request(req.op, pack(req.kwargs, self.shm_dir)))
                except (BrokenPipeError, ConnectionError, OSError):
                    self._raise_dead(worker, req.op)
            pending = {name: self.workers[name] for name in requests}
            results = {}
            while pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    names = ", ".join(pending)
                    raise WorkerError(names, f"no answer to '{requests[next(iter(pending))].op}' within "
                                      f"{timeout or self.timeout:.0f} s (raise --timeout if the model is just slow)")
                handles = {w.conn: w for w in pending.values()}
                handles.update({w.process.sentinel: w for w in pending.values()})
                for ready in wait(list(handles), timeout=left):
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
        """A rank whose peer died fails in its collective ("connection closed by peer") at about
        the moment the peer's death shows: the dead peer is the cause, whichever was seen first."""
        others = [w for name, w in pending.items() if w is not failed]
        if not others or err.remote_traceback is None:
            return err
        wait([w.process.sentinel for w in others], timeout=PEER_DEATH_GRACE_S)
        for w in others:
            if not w.process.is_alive() and not self._has_reply(w):
                try:
                    self._raise_dead(w, op)
                except WorkerError as dead:
                    dead.remote_traceback = f"after which {err}:\n{err.remote_traceback}"
                    return dead
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
        raise WorkerError(worker.name, f"died during '{op}' ({how})")

    def _sweep_requests(self) -> None:
        """Request arrays were read by now (or never will be): drop their segments."""
        if self.shm_dir and os.path.isdir(self.shm_dir):
            for entry in os.scandir(self.shm_dir):
                if entry.name.endswith(".npy"):
                    os.unlink(entry.path)

    def seconds(self, name: str) -> float:
        return self.workers[name].seconds if name in self.workers else 0.0

    def close(self, graceful: bool = True) -> None:
        """Ask politely (graceful), then terminate, then kill; never leaves a child behind."""
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
                w.process.terminate()
        for w in workers:
            w.process.join(2.0)
            if w.process.is_alive():
                w.process.kill()
                w.process.join(2.0)
        for w in workers:
            w.conn.close()
        self.workers.clear()
        if self.shm_dir:
            shutil.rmtree(self.shm_dir, ignore_errors=True)
            self.shm_dir = None
