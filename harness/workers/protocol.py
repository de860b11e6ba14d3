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
import weakref
import zlib
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
    CALL_ORDER = "call_order"
    EXPORT_STATE = "export_state"
    IMPORT_STATE = "import_state"
    REFERENCE_NAMES = "reference_names"
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
    RECORD_PROBES = "record_probes"
    REPLAY_PROBES = "replay_probes"
    DATA_OPEN = "data_open"  # the pair's own data (data_torch/data_paddle): what a split is
    DATA_ITEMS = "data_items"  # its items at given indices
    DATA_BATCHES = "data_batches"  # its batches, in order (a pass kept open between calls) or collated
    # the training run (backends/trainrun.py): begun from the initial or a kept state, trained chunk
    # by chunk, evaluated, its whole state kept at each evaluation
    RUN_BEGIN = "run_begin"
    RUN_ORDER = "run_order"  # an epoch's batches as index lists, as the train loader's sampler draws them
    RUN_STEPS = "run_steps"
    RUN_EVAL = "run_eval"
    RUN_KEEP = "run_keep"

    def __str__(self) -> str:  # messages name the op as the wire does
        return self.value


class DataOp(str, Enum):
    """What the coordinator asks of the data worker, the process that runs the pair's make_batch."""

    LOAD_PAIR = "load_pair"  # import the pair module, both frameworks stood in
    MAKE_BATCH = "make_batch"  # one batch, made and checked

    def __str__(self) -> str:
        return self.value
def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of the training run's pass over the train split in `epoch` (both ends compute it):
    the run seed for the first, as every check's pass; another for each later epoch, so a
    shuffling sampler draws a new order every epoch, the same in a resumed run."""
    return int(seed) + 1000003 * int(epoch)


def shard_rows(batch: dict, rank: int, nprocs: int) -> dict:
    """Rank `rank`'s contiguous rows of every field of a batch, as paddle's DistributedBatchSampler
    without shuffling gives them (the coordinator's shards and a rank's own pass alike)."""
    out = {}
    for key, arr in batch.items():
        rows = arr.shape[0] if arr.ndim else 0
        if rows % nprocs:
            raise ValueError(f"batch key '{key}' has {rows} rows: not divisible by {nprocs} ranks")
        per = rows // nprocs
        out[key] = arr[rank * per:(rank + 1) * per]
    return out


def probe(name: str, shape: tuple, dtype) -> np.ndarray:
    """The values both workers put in torch's tensor `name` (in torch's layout) to measure which
    way a square weight goes (backends/layout.py): random, at the scale of a default init, the
    same in every process (seeded by the name, not by Python's per-process hash)."""
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    scale = 1.0 / np.sqrt(shape[-1]) if len(shape) and shape[-1] else 1.0
    return (rng.standard_normal(shape) * scale).astype(dtype)


@dataclass
class Request:
    op: Op
    kwargs: dict = field(default_factory=dict)


@dataclass
class Reply:
    value: object
    seconds: float  # compute time inside the worker
    warnings: list = field(default_factory=list)  # Python warnings raised while it ran, as text
    logged: list = field(default_factory=list)  # what libraries logged to the console while it ran, as text


@dataclass
class Progress:
    """Sent by a worker while an op runs: `done` of `total` steps (it also shows the worker alive)."""

    done: int
    total: int


@dataclass
class Failure:
    exc_type: str
    message: str
    traceback: str


@dataclass(frozen=True, eq=False)
class SharedArray:
    """A large array in a .npy file of the run's shared-memory folder. It reads back memory-mapped
    (no copy until touched), so a handle can be held, compared piece by piece, or passed on to the
    other worker without the coordinator ever loading it."""

    path: str
    shape: tuple
    dtype: str
    worker_owned: bool = False  # a worker's own file (its initial state): the coordinator never removes it

    def load(self) -> np.ndarray:
        return np.load(self.path, mmap_mode="r", allow_pickle=False)

    def __array__(self, dtype=None, copy=None):
        arr = self.load()
        return arr if dtype is None else arr.astype(dtype)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.size * np.dtype(self.dtype).itemsize


class Deferred:
    """An array made only when it is needed: pack() makes, writes and drops each in turn, so a
    reply (or a converted state) of many large tensors never holds them all at once."""

    __slots__ = ("make",)

    def __init__(self, make):
        self.make = make

    def __array__(self, dtype=None, copy=None):
        arr = np.asarray(self.make())
        return arr if dtype is None else arr.astype(dtype)


def nbytes(value) -> int:
    return value.nbytes if isinstance(value, (np.ndarray, SharedArray)) else 0


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


def write_shared(arr: np.ndarray, shm_dir: str | Path, *, worker_owned: bool = False) -> SharedArray:
    path = Path(shm_dir) / f"{uuid.uuid4().hex}.npy"
    np.save(path, arr, allow_pickle=False)
    return SharedArray(str(path), arr.shape, arr.dtype.str, worker_owned)


def pack(obj, shm_dir: str | Path | None):
    """Replace large arrays in a nested dict/list/tuple by SharedArray handles (written to
    shm_dir); handles already in shared memory pass through as they are."""
    if isinstance(obj, Deferred):
        return pack(obj.make(), shm_dir)
    if isinstance(obj, np.ndarray):
        if shm_dir is None or obj.nbytes < SHM_MIN_BYTES or obj.dtype.hasobject:
            return obj
        return write_shared(obj, shm_dir)
    if isinstance(obj, dict):
        return {k: pack(v, shm_dir) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(pack(v, shm_dir) for v in obj)
    return obj


def unpack(obj, *, keep_handles: bool):
    """Inverse of pack. A worker reads every handle (memory-mapped); the coordinator keeps them
    (keep_handles) and owns their files: each is removed once its last handle is gone."""
    if isinstance(obj, SharedArray):
        if keep_handles:
            if obj not in _OWNED and not obj.worker_owned:  # a handle passed on is owned once
                _OWNED.add(obj)
                weakref.finalize(obj, _remove, obj.path)
            return obj
        return obj.load()
    if isinstance(obj, dict):
        return {k: unpack(v, keep_handles=keep_handles) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(unpack(v, keep_handles=keep_handles) for v in obj)
    return obj


def own(obj):
    """The coordinator's own packed requests: their files go when the request is dropped."""
    return unpack(obj, keep_handles=True)


_OWNED: weakref.WeakSet = weakref.WeakSet()


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass  # the folder was removed with the run
