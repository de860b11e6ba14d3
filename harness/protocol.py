"""What travels between the coordinator and a worker.

Control messages and small arrays are pickled through a pipe. Arrays of SHM_MIN_BYTES or more
go through shared memory: a file in the run's folder under /dev/shm (tmpfs, i.e. POSIX shared
memory pages), named in the message. The coordinator owns that folder and removes it when the
run ends, so nothing outlives a crashed worker.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import numpy as np

SHM_MIN_BYTES = 1 << 20
SIDES = ("torch", "paddle")  # the reference first: every diff is torch vs paddle


class Op(str, Enum):
    """What a coordinator may ask of a worker; both sides answer the same set."""

    PING = "ping"
    SETUP = "setup"
    EXPORT_STATE = "export_state"
    IMPORT_STATE = "import_state"
    LOAD_STATE = "load_state"
    READ_CHECKPOINT = "read_checkpoint"
    WRITE_CHECKPOINT = "write_checkpoint"
    FORWARD = "forward"
    LOSS = "loss"
    METRIC = "metric"
    LR_SCHEDULE = "lr_schedule"
    TRAIN = "train"
    TRACE_BEGIN = "trace_begin"
    TRACE_STEP = "trace_step"

    def __str__(self) -> str:  # messages name the op as the wire does
        return self.value


@dataclass
class Request:
    op: Op
    kwargs: dict = field(default_factory=dict)


@dataclass
class Reply:
    value: object
    seconds: float  # compute time inside the worker


@dataclass
class Failure:
    exc_type: str
    message: str
    traceback: str


@dataclass(frozen=True)
class SharedArray:
    path: str
    shape: tuple
    dtype: str


def shm_root() -> Path:
    base = Path("/dev/shm")
    return base if base.is_dir() and os.access(base, os.W_OK) else Path(tempfile.gettempdir())


SHM_PREFIX = "reprod-harness-"
_LEGACY_MAX_AGE_S = 86400.0  # folders of older versions carry no pid: swept when empty and a day old


def make_shm_dir() -> Path:
    """The run's folder, named after the coordinator's pid so a later run can tell it is stale."""
    return Path(tempfile.mkdtemp(prefix=f"{SHM_PREFIX}{os.getpid()}-", dir=shm_root()))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def sweep_stale_shm_dirs() -> None:
    """Folders whose coordinator is gone (SIGKILL leaves them): removed at the next start."""
    root = shm_root()
    for entry in root.glob(f"{SHM_PREFIX}*"):
        owner = entry.name[len(SHM_PREFIX):].split("-")[0]
        try:
            if owner.isdigit():
                stale = int(owner) != os.getpid() and not _alive(int(owner))
            else:
                stale = not any(entry.iterdir()) and time.time() - entry.stat().st_mtime > _LEGACY_MAX_AGE_S
        except OSError:
            continue
        if stale and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)


def pack(obj, shm_dir: str | Path | None):
    """Replace large arrays in a nested dict/list/tuple by SharedArray handles."""
    if isinstance(obj, np.ndarray):
        if shm_dir is None or obj.nbytes < SHM_MIN_BYTES or obj.dtype.hasobject:
            return obj
        path = Path(shm_dir) / f"{uuid.uuid4().hex}.npy"
        np.save(path, obj, allow_pickle=False)
        return SharedArray(str(path), obj.shape, obj.dtype.str)
    if isinstance(obj, dict):
        return {k: pack(v, shm_dir) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(pack(v, shm_dir) for v in obj)
    return obj


def unpack(obj, *, consume: bool):
    """Inverse of pack. consume=True removes the segment (the receiver owns it)."""
    if isinstance(obj, SharedArray):
        arr = np.load(obj.path, allow_pickle=False)
        if consume:
            os.unlink(obj.path)
        return arr
    if isinstance(obj, dict):
        return {k: unpack(v, consume=consume) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(unpack(v, consume=consume) for v in obj)
    return obj
