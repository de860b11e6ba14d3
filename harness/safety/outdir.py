"""The --out folder of a run: checked before any worker starts, locked for the whole run, and filled
through a staging folder beside it that takes its place only when the run finished.

So a folder always holds one run's complete set: two runs never write into one folder (the second
is refused, naming the holder's pid), and a run that fails or is interrupted leaves the previous
complete set untouched (or no folder), never a report.json beside another run's files.

A folder is replaced only when it is empty or its manifest (harness/safety/manifest.py) proves each
of its files a run's own; the previous set is then removed file by file, each checked again, and
nothing else is ever removed.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import shutil
import stat
import time
from pathlib import Path

from harness.errors import UsageError
from harness.safety import manifest

HOLDER_WRITE_GRACE_S = 0.5  # how long a lock may show no pid after its holder took it
_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def lock_path(folder: Path) -> Path:
    return folder.with_name(folder.name + ".lock")


def _staging_prefix(folder: Path) -> str:
    return f".{folder.name}.staging-"


def _shown(names: list) -> str:
    return ", ".join(names[:3]) + (f"... ({len(names)} in all)" if len(names) > 3 else "")


def check_usable(folder: Path) -> None:
    """--out must be (or become) a folder this run may fill and replace; else exit 2 naming why."""
    for place in (folder, *folder.parents):
        if place.exists() or place.is_symlink():
            break
    else:
        place = None
    if place is not None and not place.is_dir():
        what = "is a file, not a folder" if place == folder else f"is inside {place}, which is a file, not a folder"
        raise UsageError(f"--out {folder}: {what}")
    if folder.is_dir():
        if os.path.ismount(folder):  # a mount point cannot be renamed: the run's files would be lost at the end
            raise UsageError(f"--out {folder}: is a mount point, and a run replaces its folder as a whole; "
                             f"give a folder inside it (e.g. {folder / 'run'})")
        strangers = manifest.foreign(folder)
        if strangers:
            unproven = "" if manifest.read(folder) is not None else (
                f"; no {manifest.NAME} proves any of it a run's own (a folder of an earlier version? move it away)")
            raise UsageError(f"--out {folder}: holds files that are not a reprod-harness run's ({_shown(strangers)})"
                             f"{unproven}; each run replaces its folder as a whole, so give a new or empty folder")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise UsageError(f"--out {folder}: not writable (permission denied)")
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--out {folder}: cannot create {exc.filename or folder.parent}: {exc.strerror}") from None


class OutFolder:
    """with OutFolder(path) as out: write into out.staging, then out.commit() when the run finished."""

    def __init__(self, folder: Path):
        self.path = Path(folder)
        self.staging: Path | None = None
        self._lock_fd: int | None = None

    def __enter__(self) -> OutFolder:
        check_usable(self.path)
        self._lock()
        try:
            self._sweep()
            self.staging = self.path.with_name(f"{_staging_prefix(self.path)}{os.getpid()}")
            os.mkdir(self.staging)  # 0777 minus the umask, as the folder it becomes should be
        except OSError as exc:
            self._unlock()
            raise UsageError(f"--out {self.path}: cannot write in {self.path.parent}: {exc.strerror}") from None
        except BaseException:
            self._unlock()
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            if self.staging is not None:  # not committed: this run's files go, the previous set stays
                shutil.rmtree(self.staging, ignore_errors=True)
                self.staging = None
        finally:
            self._unlock()

    def commit(self) -> None:
        """The staging folder, its manifest written last, becomes the folder, in one step where the
        kernel can exchange them. Files that appeared in the folder while the run ran keep it: the
        run's set goes beside it instead (exit 2, naming both)."""
        try:
            manifest.write(self.staging)
            strangers = manifest.foreign(self.path) if self.path.is_dir() else []
            if strangers:
                beside = self.path.with_name(f"{self.path.name}.run-{os.getpid()}")
                os.rename(self.staging, beside)
                self.staging = None
                raise UsageError(f"--out {self.path}: files that are not the run's appeared there while it ran "
                                 f"({_shown(strangers)}); the run's files are in {beside} instead")
            self._replace()
        except OSError as exc:
            raise UsageError(f"--out {self.path}: cannot put the run's files in place: {exc.strerror}") from None
        self.staging = None

    def _replace(self) -> None:
        if self.path.is_dir() and _exchange(self.staging, self.path):
            self._drop_previous(self.staging)  # it holds the previous set now
        else:
            old = self.path.with_name(f".{self.path.name}.old-{os.getpid()}")
            if self.path.is_dir():
                os.rename(self.path, old)
            os.rename(self.staging, self.path)
            if old.is_dir():
                self._drop_previous(old)

    def _drop_previous(self, old: Path) -> None:
        """The previous set, file by file as its manifest proves them; anything else stays, beside."""
        if not manifest.discard(old):
            os.rename(old, self.path.with_name(f"{self.path.name}.kept-{os.getpid()}"))

    # ------------------------------------------------------------------ the lock
    def _lock(self) -> None:
        path = lock_path(self.path)
        while True:
            try:
                # never through a link: a planted <out>.lock -> /etc/passwd would be truncated below
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise UsageError(f"--out {self.path}: cannot lock {path}: is a link, not a lock file") from None
                raise UsageError(f"--out {self.path}: cannot write in {self.path.parent}: {exc.strerror}") from None
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)
                raise UsageError(f"--out {self.path}: cannot lock {path}: not a regular file")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = _holder(fd)
                os.close(fd)
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise UsageError(f"--out {self.path}: cannot lock {path}: {exc.strerror}") from None
                raise UsageError(f"--out {self.path}: another run is writing there (pid {holder}, lock {path}); "
                                 "wait for it to end or give another --out") from None
            if _same_file(fd, path):  # else a finishing holder removed it after our open: lock the new one
                break
            os.close(fd)
        self._lock_fd = fd
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError as exc:  # a full disk: not even the pid fits
            self._unlock()
            raise UsageError(f"--out {self.path}: cannot write the lock {path}: {exc.strerror}") from None

    def _unlock(self) -> None:
        if self._lock_fd is None:
            return
        try:
            os.unlink(lock_path(self.path))  # while still held: a waiting run then locks a fresh file
        except OSError:
            pass
        os.close(self._lock_fd)
        self._lock_fd = None

    def _sweep(self) -> None:
        """Leftovers of runs that were killed (SIGKILL, power loss): no one else holds the lock now."""
        parent, name = self.path.parent, self.path.name
        olds = sorted(parent.glob(f".{name}.old-*"))
        if olds and not self.path.exists() and not olds[-1].is_symlink():  # killed mid-commit(): restore it
            os.rename(olds.pop(), self.path)
        for leftover in [*parent.glob(f"{_staging_prefix(self.path)}*"), *olds]:
            if leftover.is_symlink():  # not ours (rmtree would refuse it): the link goes, never its target
                leftover.unlink()
            elif manifest.read(leftover) is None:  # a killed run's staging folder: all of it the run's
                shutil.rmtree(leftover, ignore_errors=True)
            else:  # a previous set, exchanged out by a run killed before it removed it
                self._drop_previous(leftover)


def _holder(fd: int) -> str:
    """The pid in a lock another run holds. It writes it just after it locks: read again for a
    moment when it is not there yet."""
    deadline = time.monotonic() + HOLDER_WRITE_GRACE_S
    while not (text := os.pread(fd, 32, 0).decode(errors="replace").strip()) and time.monotonic() < deadline:
        time.sleep(0.01)
    return text or "unknown"


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def _exchange(a: Path, b: Path) -> bool:
    """renameat2(RENAME_EXCHANGE): both names swap at once, so the folder never goes missing."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    return fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0
