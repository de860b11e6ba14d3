"""Checkpoints of either framework: `run --weights` (both sides start from one) and the `convert`
command (one framework's file written as the other's), both through the run's weight plan."""

from __future__ import annotations

import os
from pathlib import Path

from harness.errors import UsageError, WorkerError
from harness.safety.picklescan import check_checkpoint
from harness.workers.protocol import Op

SUFFIXES = {".pt": "torch", ".pth": "torch", ".bin": "torch", ".pdparams": "paddle"}
TARGET_SUFFIXES = {"torch": (".pdparams",), "paddle": (".pt", ".pth")}  # by the source's side


def checkpoint_side(path: Path) -> str:
    side = SUFFIXES.get(Path(path).suffix)
    if side is None:
        raise UsageError(f"{path}: unknown checkpoint type (expected {', '.join(SUFFIXES)})")
    if not Path(path).is_file():
        raise UsageError(f"{path}: file not found")
    return side


def verify(path: Path) -> str:
    """Before any worker starts: the file exists, has a known type, and names nothing its loader
    must not run (harness/safety/picklescan.py); returns its side."""
    side = checkpoint_side(path)
    check_checkpoint(path, side)
    return side


# what a worker's loader raises for a file it refuses (safeload's, torch's weights_only unpickler's)
REFUSED = ("UnsafeFile", "BrokenFile", "UnpicklingError")


def read(session, side: str, path: Path) -> dict:
    """The worker reads the file with its restricted loader; a refusal is a usage error (exit 2), one line."""
    try:
        return session.one(side, Op.READ_CHECKPOINT, path=str(path))
    except WorkerError as exc:
        if exc.exc_type not in REFUSED:
            raise
        if exc.exc_type in ("UnsafeFile", "BrokenFile"):  # safeload's message names the file and the fault already
            raise UsageError(exc.exc_message) from None
        raise UsageError(f"{path}: refusing to load it: torch's weights_only loader says: "
                         f"{refusal(exc.remote_traceback or '', exc.exc_message)}") from None


def refusal(traceback: str, message: str) -> str:
    """torch's weights_only error is many lines and ends with a hint to load the file unsafely:
    only the line that names what was refused is kept."""
    for line in traceback.splitlines():
        if "Unsupported global" in line or "Trying to" in line or "Can only" in line:
            return line.split("Unpickling error: ")[-1].strip().split(" Please use")[0]
    return message.split(" This file can still be loaded")[0]


def load_into(session, path: Path) -> None:
    """--weights: the torch model takes the checkpoint (a paddle one through the plan); the
    session then shares torch's weights with paddle as always."""
    side = checkpoint_side(path)
    session.progress(f"loading {path.name} ({side} checkpoint)")
    state = read(session, side, path)
    if side == "paddle":
        if session.plan is None:
            raise UsageError(f"--weights {path}: a paddle checkpoint needs the automatic mapping to reach torch "
                             "(the pair defines its own torch_to_paddle); give a torch checkpoint instead")
        state = session.plan.to_torch(state)
    session.one("torch", Op.LOAD_STATE, state=state, keep_own=session.torch_only)


def validate_conversion(*, torch_weights: Path | None, paddle_weights: Path | None, target: Path) -> Path:
    """The convert command's arguments, checked before any worker starts; returns the source."""
    if (torch_weights is None) == (paddle_weights is None):
        raise UsageError("give exactly one of --torch-weights or --paddle-weights")
    source = torch_weights or paddle_weights
    side = verify(source)
    given = "torch" if torch_weights else "paddle"
    if side != given:
        raise UsageError(f"{source}: a {side} checkpoint given as --{given}-weights")
    wanted = TARGET_SUFFIXES[side]
    if not str(target).endswith(wanted):
        raise UsageError(f"--out {target}: expected a {' or '.join(wanted)} file")
    folder = Path(target).absolute().parent
    if Path(target).is_dir():
        raise UsageError(f"--out {target}: is a folder, not a file")
    if not folder.is_dir():
        raise UsageError(f"--out {target}: {folder} is not an existing folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"--out {target}: cannot write in {folder} (permission denied)")
    return source


def convert(session, source: Path, target: Path) -> str:
    """source (either framework) written as the other framework's file at target; returns its side."""
    side = checkpoint_side(source)
    state = read(session, side, source)
    if side == "torch":
        if session.plan is None:  # the pair's torch_to_paddle, applied by the paddle worker
            session.one("paddle", Op.IMPORT_STATE, state=state, raw=True)
            state = session.one("paddle", Op.EXPORT_STATE)
        else:
            state = session.plan.to_paddle(state)
        session.one("paddle", Op.WRITE_CHECKPOINT, state=state, path=str(target))
        return "paddle"
    if session.plan is None:
        raise UsageError("convert: paddle -> torch needs the automatic mapping (the pair defines torch_to_paddle)")
    session.one("torch", Op.WRITE_CHECKPOINT, state=session.plan.to_torch(state), path=str(target),
                keep_own=session.torch_only)
    return "torch"
