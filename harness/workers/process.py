"""The worker processes: start, submit requests (workers run ahead through them), wait on pipes and
sentinels, close for sure."""

from __future__ import annotations

import collections
import contextlib
import importlib
import os
import queue
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import multiprocess as mp
from multiprocess.connection import wait

from harness.errors import RemoteTraceback, UsageError, WorkerError
from harness.workers import reaping
from harness.workers.protocol import (
    Failure,
    Progress,
    Reply,
    Request,
    make_shm_dir,
    own,
    pack,
    sweep_stale_shm_dirs,
    unpack,
)

CLOSE_GRACE_S = 5.0
# how long a failed rank's peers get to show that one of them died first (and caused it); the wait
# ends as soon as every peer has either died or answered
PEER_DEATH_GRACE_S = 1.0
# how long a worker that did not answer in time gets to write its stack (faulthandler on SIGUSR1)
STACK_GRACE_S = 2.0
TIMEOUT_HINT = "raise --timeout if the model is just slow"
_PROGRESS = object()  # what _receive returns for a progress message (not a reply)


WORKER_ENTRY = "backends.worker"  # started by name: the coordinator never imports backends code


@dataclass
class WorkerSpec:
    name: str  # "torch" | "paddle" | "torch.1" (rank 1 of a data-parallel run) ...
    options: dict  # threads, device, env, ... (see the entry module's main)
    framework: str = ""  # defaults to name
    entry: str = WORKER_ENTRY  # module whose main(framework, conn, options) serves requests
    python: str | None = None  # another environment's interpreter (harness/workers/interpreters.py); None: ours


def _enter(entry: str, framework: str, conn, options: dict) -> None:
    """The child's first code: imports its entry module by name there, never here."""
    importlib.import_module(entry).main(framework, conn, options)


@contextlib.contextmanager
def _interpreter(python: str | None):
    """Spawn starts `python` rather than ours, and the child keeps its own environment's sys.path:
    spawn would hand it the coordinator's, importing this environment's packages there."""
    if python is None:
        yield
        return
    from multiprocess import resource_tracker, spawn

    resource_tracker.ensure_running()  # with our interpreter: spawn starts it with the current executable
    executable, prepare = spawn.get_executable(), spawn.get_preparation_data

    def own_path(name):
        data = prepare(name)
        data.pop("sys_path", None)
        return data

    spawn.set_executable(python)
    spawn.get_preparation_data = own_path
    try:
        yield
    finally:
        spawn.set_executable(executable)
        spawn.get_preparation_data = prepare


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
    def __init__(self, ctx, spec: WorkerSpec, shm_dir, working, slot: int, tag: str):
        self.name, self.framework = spec.name, spec.framework or spec.name
        self.fault_file = Path(shm_dir) / f"faults-{spec.name}.txt"  # the worker's faulthandler output
        self.output_file = Path(shm_dir) / f"output-{spec.name}.txt"  # what it printed (backends/worker.py)
        self.conn, child = ctx.Pipe()
        # working[slot]: whether this worker has work now; each worker reads them all to size its
        # share of the cores (backends/worker.CoreShare)
        self.slot = slot
        # parent: a worker whose coordinator is gone runs nothing (backends/worker.orphaned); run_tag:
        # what each process it starts carries, so the run ends them all (harness/workers/reaping.py)
        options = dict(spec.options, shm_dir=str(shm_dir), fault_file=str(self.fault_file), working=working,
                       slot=slot, parent=os.getpid(), run_tag=tag, output_file=str(self.output_file))
        self.process = ctx.Process(
            target=_enter,
            args=(spec.entry, self.framework, child, options),
            name=f"reprod-{spec.name}-worker",
            daemon=True,
        )
        with _main_module_hidden(), _interpreter(spec.python):
            self.process.start()
        child.close()  # so a dead child shows as EOF on our end
        self.seconds = 0.0
        self.inflight: collections.deque = collections.deque()  # (submission, op) in the order sent
        self.active_since = time.monotonic()  # when its current op started, or it last showed progress
        self.steps: tuple | None = None  # (done, total) its current op last reported, None before any
        # A worker busy with an earlier op reads no request while its reply may fill the other
        # direction of the pipe: sending from this thread keeps the coordinator free (no deadlock).
        self.outbox: queue.Queue = queue.Queue()
        self.sender = threading.Thread(target=self._send_all, name=f"send-{spec.name}", daemon=True)
        self.sender.start()

    def _send_all(self) -> None:
        while (msg := self.outbox.get()) is not _STOP:
            try:
                self.conn.send(msg)
            except (OSError, ValueError):
                return  # the worker is gone; its sentinel tells the receiving side
            if msg is None:  # the shutdown request
                return


_STOP = object()


class Submission:
    """Requests sent to some workers; wait() for their replies. Later submissions may be sent
    before this one is waited for: each worker serves its requests in order, running ahead."""

    def __init__(self, group: "WorkerGroup", requests: dict, packed: list, *, timeout: float, hint: str,
                 label: str | None, until_progress: tuple | None = None):
        self.group, self.requests, self._packed = group, requests, packed  # files live until answered
        self.timeout, self.hint, self.label = timeout, hint, label  # a deadline per op of its workers
        # (limit, hint, phase) for each worker until its first progress report (joining the ranks is
        # start-up; the steps after it are steps)
        self.until_progress = until_progress
        self.results: dict = {}

    def deadline(self, worker: "_Worker") -> tuple:
        """(limit, hint, phase) that applies to the worker's current op now."""
        if self.until_progress is not None and worker.steps is None:
            return self.until_progress
        done, total = worker.steps or (None, None)
        phase = None if done is None else f"in step {done + 1} of {total}" if done < total else "after its last step"
        return self.timeout, self.hint, phase

    @property
    def done(self) -> bool:
        return len(self.results) == len(self.requests)

    def wait(self) -> dict:
        self.group.wait_for(self)
        self._packed = None
        return self.results


class WorkerGroup:
    """start(), then any number of submit({...}).wait() (or call({...})), then close() (always).

    Every wait watches the pipes *and* the process sentinels with a deadline per worker (reset
    whenever it starts an op or reports progress), so a worker that raises, dies or hangs ends
    the wait; then every worker is stopped (terminate, then kill) and the root cause is raised
    as WorkerError with the worker's traceback.
    """

    def __init__(self, specs: list[WorkerSpec], timeout: float):
        self.specs, self.timeout = specs, timeout
        self.workers: dict[str, _Worker] = {}
        self.shm_dir = None
        self._working = None
        self.on_progress = None  # (worker name, op, done, total) -> None
        self.warnings: dict = {}  # warning text -> the first worker that raised it
        self.tag: str | None = None  # in the environment of every process the workers start
        self.logged: dict = {}  # a library's log record, as text -> the first worker that logged it
        self.printed: dict = {}  # worker name -> what it printed to its stdout and stderr, kept at close

    @property
    def names(self) -> list:
        return [spec.name for spec in self.specs]

    def start(self) -> None:
        ctx = mp.get_context("spawn")  # never fork: CUDA and thread pools do not survive it
        sweep_stale_shm_dirs()
        self.shm_dir = make_shm_dir()
        self.tag = reaping.new_tag()
        # every worker has work from its start (its framework's import); kept: its memory must
        # outlive the children's start
        self._working = ctx.RawArray("b", [1] * len(self.specs))
        try:
            for slot, spec in enumerate(self.specs):
                self.workers[spec.name] = _Worker(ctx, spec, self.shm_dir, self._working, slot, self.tag)
        except BaseException:
            self.close()
            raise

    def call(self, requests: dict[str, Request], timeout: float | None = None, hint: str = TIMEOUT_HINT,
             label: str | None = None) -> dict:
        """Send each worker its request, wait for all replies at once; returns name -> value.
        timeout (default: the group's) and hint (how to raise it) word a timeout's message."""
        return self.submit(requests, timeout=timeout, hint=hint, label=label).wait()

    def submit(self, requests: dict[str, Request], *, label: str | None = None, timeout: float | None = None,
               hint: str = TIMEOUT_HINT, until_progress: tuple | None = None) -> Submission:
        """label names the work in progress reports (a check's name) instead of the op; until_progress
        is the (limit, hint, phase) of each worker's op until it first reports progress."""
        packed = [own(self._pack(req.kwargs)) for req in requests.values()]
        submission = Submission(self, requests, packed, timeout=timeout or self.timeout, hint=hint, label=label,
                                until_progress=until_progress)
        for name in requests:  # all marked before any is sent: see backends/worker.CoreShare
            self._working[self.workers[name].slot] = 1
        for (name, req), kwargs in zip(requests.items(), packed):
            worker = self.workers[name]
            if not worker.inflight:
                worker.active_since, worker.steps = time.monotonic(), None
            worker.inflight.append((submission, req.op))
            worker.outbox.put(Request(req.op, kwargs))
        return submission

    def wait_for(self, submission: Submission) -> None:
        try:
            while not submission.done:
                busy = [self.workers[name] for name in submission.requests if name not in submission.results]
                self._receive_one(busy)
        except BaseException:
            self.close(graceful=False)  # one broke: stop the rest now
            raise

    def _receive_one(self, busy: list) -> None:
        """Read the next message of any worker the submission waits on (their earlier replies
        first), or raise for the first that died, failed or ran past its deadline."""
        handles = {w.conn: w for w in busy}
        handles.update({w.process.sentinel: w for w in busy})
        left = min(w.active_since + w.inflight[0][0].deadline(w)[0] for w in busy) - time.monotonic()
        ready_now = wait(list(handles), timeout=max(left, 0.0))
        if not ready_now:  # a reply that came at the deadline was read first: only the silent are blamed
            now = time.monotonic()
            late = [w for w in busy if now - w.active_since >= w.inflight[0][0].deadline(w)[0]] or busy
            submission, op = late[0].inflight[0]
            raise timed_out(late, submission.label or op, *submission.deadline(late[0]))
        for ready in ready_now:
            worker = handles[ready]
            submission, op = worker.inflight[0]
            try:
                value = self._receive(worker, op)
            except WorkerError as err:
                raise self._root_cause(err, worker, busy, op)
            if value is not _PROGRESS:
                worker.inflight.popleft()
                worker.active_since, worker.steps = time.monotonic(), None
                submission.results[worker.name] = value
            return

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
            _raise_dead(worker, op)
        if isinstance(msg, Progress):
            worker.active_since, worker.steps = time.monotonic(), (msg.done, msg.total)
            if self.on_progress is not None:
                self.on_progress(worker.name, worker.inflight[0][0].label or op, msg.done, msg.total)
            return _PROGRESS
        if isinstance(msg, Failure):
            err = WorkerError(worker.name, f"'{op}' failed: {msg.exc_type}: {msg.message}", msg.traceback,
                              exc_type=msg.exc_type, exc_message=msg.message)
            raise err from RemoteTraceback(msg.traceback)
        assert isinstance(msg, Reply)
        worker.seconds += msg.seconds
        for text in msg.warnings:
            self.warnings.setdefault(text, worker.name)
        for text in msg.logged:
            self.logged.setdefault(text, worker.name)
        return unpack(msg.value, keep_handles=True)

    def _root_cause(self, err: WorkerError, failed: _Worker, busy: list, op: str) -> WorkerError:
        """A rank whose peer died fails in its collective ("connection closed by peer"), or aborts
        in it (gloo's uncaught IoException: SIGABRT), at about the moment the peer's death shows:
        the dead peer is the cause, whichever was seen first, and it is named before the peer."""
        peers = [w for w in busy if w is not failed and w.framework == failed.framework]
        if not peers:
            return err
        _await_peers(peers)
        if err.exc_type is None and not _aborted(failed):  # a death of its own (a segfault, an exit, a kill):
            follow = self._peer_failure(peers, op)  # the cause, whichever of it and a peer's failure came first
            if follow is not None:
                err.remote_traceback = _after(err, follow)
            return err
        for w in peers:
            if w.process.sentinel in wait([w.process.sentinel], timeout=0):
                # the sentinel shows as the dying child closes its files, a moment before it can
                # be reaped: without the join it would still look alive and its peer be blamed
                w.process.join(1.0)
        dead = [w for w in peers if not w.process.is_alive() and not _has_reply(w)]
        for w in sorted(dead, key=_aborted):  # a peer that died of its own accord before one that aborted
            if _aborted(w) and _aborted(failed):
                break
            try:
                _raise_dead(w, op)
            except WorkerError as cause:
                cause.remote_traceback = _after(cause, err)
                return cause
        return err

    def _peer_failure(self, peers: list, op: str) -> WorkerError | None:
        """The first failure a peer reported (its collective, broken by the death), if any did."""
        for w in peers:
            try:
                while w.process.is_alive() and w.conn.poll():  # past its progress reports
                    self._receive(w, op)
            except WorkerError as failure:
                if failure.exc_type is not None:
                    return failure
        return None

    def seconds(self, name: str) -> float:
        return self.workers[name].seconds if name in self.workers else 0.0

    def close(self, graceful: bool = True) -> None:
        """Ask politely (graceful), then SIGTERM each worker's process group, then kill; never
        leaves a child behind, nor a process the pair's code started (harness/workers/reaping.py)."""
        workers = list(self.workers.values())
        family = reaping.family(w.process.pid for w in workers)  # before any is stopped: all still below one
        for w in workers:
            w.outbox.put(None if graceful and w.process.is_alive() else _STOP)  # None: the shutdown request
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
            w.outbox.put(_STOP)
            w.conn.close()
        _keep_output(self.printed, workers)
        reaping.end(family, self.tag)  # what left the groups: daemons, and what outlived a dead worker
        self.workers.clear()
        if self.shm_dir:
            shutil.rmtree(self.shm_dir, ignore_errors=True)
            self.shm_dir = None


def _keep_output(printed: dict, workers: list) -> None:
    """What each worker printed, read before its file goes with the shared-memory folder; a
    restarted group's output follows the first one's."""
    for w in workers:
        text = read_output(w)
        if text:
            printed[w.name] = printed.get(w.name, "") + text


def read_output(worker: _Worker) -> str:
    try:
        return worker.output_file.read_text(errors="replace")
    except OSError:
        return ""


def _await_peers(peers: list) -> None:
    """Until each peer has either died or has a message waiting, for PEER_DEATH_GRACE_S at most."""
    deadline = time.monotonic() + PEER_DEATH_GRACE_S
    while time.monotonic() < deadline and not all(w.conn.poll() or not w.process.is_alive() for w in peers):
        wait([w.process.sentinel for w in peers] + [w.conn for w in peers], timeout=0.05)


def _has_reply(worker: _Worker) -> bool:
    """A message waits in the pipe (a closed pipe polls readable too, but holds none)."""
    try:
        return worker.conn.poll() and worker.conn.recv() is not None
    except (EOFError, OSError):
        return False

def _raise_dead(worker: _Worker, op: str):
    worker.process.join(1.0)
    code = worker.process.exitcode
    how = "still running" if code is None else f"exit code {code}" if code >= 0 else f"killed by signal {-code}"
    stack = read_faults(worker)  # faulthandler's report: the Python stack at a fatal signal
    said = [f"{worker.name} worker's Python stack when it died:\n{stack}" if stack else "", _last_output(worker)]
    raise WorkerError(worker.name, f"died during '{op}' ({how})", "".join(said) or None)


def _last_output(worker: _Worker, lines: int = 20) -> str:
    """The end of what the worker printed: a library's own last words before it died."""
    tail = read_output(worker).splitlines()[-lines:]
    return f"{worker.name} worker's last output:\n" + "".join(f"  {line}\n" for line in tail) if tail else ""


def _after(cause: WorkerError, then: WorkerError) -> str:
    """The cause's traceback, and what failed after it."""
    return f"{cause} first; {cause.remote_traceback or ''}after it, {then}:\n{then.remote_traceback or ''}"


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


def timed_out(silent: list, op: str, limit: float, hint: str, phase: str | None = None) -> WorkerError:
    """The workers that did not answer, blamed with the stack each was in (faulthandler on SIGUSR1)
    and the phase of their op that hung (joining the ranks, a step)."""
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
    during = f" {phase}" if phase else ""
    return WorkerError(", ".join(w.name for w in silent), f"no answer to '{op}'{during} within {limit:.0f} s ({hint})",
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
