"""Every process a run's workers started, found and ended when they are closed.

Each worker is a child subreaper (backends/worker.py): whatever its code starts stays below it
while it lives, even a daemon that leaves the process group (setsid) and double-forks, whose
orphans come to the worker rather than to init. So just before the workers are stopped the
coordinator takes the tree below each (`family`); once they are stopped it freezes (SIGSTOP) what
is left of that tree, anything born below it meanwhile and every process carrying the run's tag in
its environment (one whose worker died first), until nothing new shows, then kills them all
(SIGKILL). A process is known by its pid and start time, so a pid reused meanwhile is never
signalled, and nothing outside the workers' trees and the run's tag is ever touched: harness.check()
may run inside a user's own process, whose other children are theirs.

Linux /proc; where it is missing nothing is found and the process groups are the only net.
"""

from __future__ import annotations

import contextlib
import os
import signal
import uuid
from pathlib import Path

ROUNDS = 20  # freeze rounds: each catches what the previous one's processes forked before they stopped
TAG_VARIABLE = "REPROD_HARNESS_RUN"  # set by each worker (backends/worker.py), inherited below it


def _stat(pid: int) -> tuple | None:
    """(parent pid, start time, state) of a live process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # after the command name, which may hold spaces
    return int(fields[1]), int(fields[19]), fields[0]


def processes() -> dict:
    """pid -> (parent pid, start time, state) of every process this one can see."""
    try:
        entries = os.listdir("/proc")
    except OSError:
        return {}
    found = {}
    for entry in entries:
        if entry.isdigit() and (stat := _stat(int(entry))) is not None:
            found[int(entry)] = stat
    return found


def below(roots, table: dict) -> dict:
    """pid -> start time of every process under `roots` (their children, theirs, ...)."""
    children: dict = {}
    for pid, (ppid, _start, _state) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = {}, list(roots)
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found[child] = table[child][1]
                todo.append(child)
    return found


def family(pids) -> dict:
    """The trees below these workers, now."""
    return below([p for p in pids if p], processes())


def new_tag() -> str:
    """A run's tag, as the environment entry its workers set: NAME=<coordinator pid>-<random>."""
    return f"{TAG_VARIABLE}={os.getpid()}-{uuid.uuid4().hex[:12]}"


def tagged(tag: str, table: dict) -> dict:
    """pid -> start time of every process whose environment holds the run's tag."""
    needle = tag.encode()
    found = {}
    for pid, (_ppid, start, _state) in table.items():
        try:
            if pid != os.getpid() and needle in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                found[pid] = start
        except OSError:
            continue
    return found


def end(known: dict, tag: str | None) -> None:
    """Kill what is left of `known` (pid -> start time), everything below it, and every process
    carrying `tag`: each frozen first, so that none forks away while the rest are found."""
    frozen: dict = {}
    for _ in range(ROUNDS):
        table = processes()
        alive = {pid: start for pid, start in {**known, **frozen}.items()
                 if pid in table and table[pid][1] == start and table[pid][2] != "Z"}
        alive.update(below(alive, table))
        if tag:
            alive.update(tagged(tag, table))
        new = {pid: start for pid, start in alive.items() if pid not in frozen}
        if not new:
            break
        for pid in new:
            _signal(pid, signal.SIGSTOP)
        frozen.update(new)
    for pid in frozen:
        _signal(pid, signal.SIGKILL)


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)
