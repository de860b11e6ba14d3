"""Artifacts: reprod_log-compatible .npy files and diff logs, written atomically.

Every file is written to a temporary name and renamed into place, so a reader never sees a
half-written file, and report.json only exists for a run that finished.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from harness.errors import OutputError
from harness.verdict.diff import CHUNK, CheckResult
from harness.verdict.keys import texts

# Artifact stems per check, as the reproduction guide names them.
STEMS = {
    "data": "data",
    "init": "init",
    "forward": "forward",
    "metric": "metric",
    "loss": "loss",
    "lr": "lr",
    "backward": "bp_align",
    "train": "train_align",
}
LOG_NAMES = {"lr": "scheduler_diff.log"}


def log_name(check: str) -> str:
    return LOG_NAMES.get(check, f"{STEMS.get(check, check)}_diff.log")


def _umask() -> int:
    mask = os.umask(0o022)  # the only way to read it is to set it: put it straight back
    os.umask(mask)
    return mask


def atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; an artifact is as readable as any file
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_npy(path: Path, arrays: dict) -> None:
    """np.save of a dict of arrays: what reprod_log.ReprodLogger.save writes and load_info reads."""
    buf = io.BytesIO()
    np.save(buf, {k: np.asarray(v) for k, v in arrays.items()}, allow_pickle=True)
    atomic_write(path, buf.getvalue())


def tensor_stats(arrays: dict) -> dict:
    """Per tensor [mean, std, min, max, L2 norm] in float64, read chunk by chunk: what is saved in
    place of a model-sized dump."""
    out = {}
    for name, value in arrays.items():
        flat = np.asarray(value).reshape(-1)
        if not flat.size:
            continue
        total = square = 0.0
        low, high = np.inf, -np.inf
        for start in range(0, flat.size, CHUNK):
            x = flat[start:start + CHUNK].astype(np.float64)
            total, square = total + float(x.sum()), square + float(x @ x)
            low, high = min(low, float(x.min())), max(high, float(x.max()))
        mean = total / flat.size
        out[name] = np.array([mean, np.sqrt(max(square / flat.size - mean * mean, 0.0)), low, high, np.sqrt(square)])
    return out


def reprod_log_mean(a, b):
    """The value reprod_log prints: |a - b|.mean() in the arrays' own dtype (numpy scalar)."""
    return np.abs(np.asarray(a) - np.asarray(b)).mean()


def diff_log_lines(result: CheckResult, ref: dict, other: dict, stamp: str | None = None) -> list:
    """reprod_log's report() lines, line for line, with our verdict per key, then strict details."""
    stamp = stamp or time.strftime("%Y/%m/%d %H:%M:%S")
    head = f"[{stamp}] root INFO: "
    lines = []
    for k in result.keys:
        a, b = ref.get(k.id), other.get(k.id)
        if a is None or b is None or k.shape_other is not None or k.dtype_other is not None:
            value = "nan"
        else:
            value = "{}".format(reprod_log_mean(a, b)) if k.mean_abs is not None else "nan"
        lines.append(f"{head}{k.key}: ")
        lines.append(f"{head}\tmean diff: check passed: {k.passed}, value: {value}")
    for k in result.failing:
        lines.append(f"{head}strict: {k.key}: FAILED: {k.reason}")
    if result.compared == 0:
        lines.append(f"{head}strict: {result.why}")
    lines.append(f"{head}diff check {'passed' if result.passed else 'failed'}")
    return lines


class ArtifactWriter:
    """Writes into out_dir (a run's staging folder); errors name the file under `shown` (the --out
    folder it becomes) and are OutputError: exit 2, one line, whatever the OSError."""

    def __init__(self, out_dir: Path, shown: Path | None = None):
        self.out_dir = Path(out_dir)
        self.shown = Path(shown) if shown is not None else self.out_dir
        with self.writing("report.json"):
            self.out_dir.mkdir(parents=True, exist_ok=True)
            for name in ("report.json", "report.html"):  # a report must never describe an older run than the files beside it
                stale = self.out_dir / name
                if stale.exists():
                    stale.unlink()

    @contextlib.contextmanager
    def writing(self, name: str):
        """Around any write of the artifact `name` (plot.py's figure included)."""
        try:
            yield self.out_dir / name
        except OSError as exc:
            raise OutputError(self.shown / name, exc) from None

    def check(self, result: CheckResult, ref: dict, other: dict) -> None:
        """The check's two reprod_log files (keyed by Key) and its diff log."""
        stem = STEMS[result.name]
        self.arrays(f"{stem}_torch.npy", ref)
        self.arrays(f"{stem}_paddle.npy", other)
        self.log(log_name(result.name), result, ref, other)

    def log(self, name: str, result: CheckResult, ref: dict, other: dict) -> None:
        self.text(name, "\n".join(diff_log_lines(result, ref, other)) + "\n")

    def text(self, name: str, content: str) -> None:
        with self.writing(name) as path:
            atomic_write(path, content.encode())

    def arrays(self, name: str, arrays: dict) -> None:
        with self.writing(name) as path:
            save_npy(path, texts(arrays))

    def report(self, report) -> Path:
        with self.writing("report.json") as path:
            atomic_write(path, (json.dumps(report.to_json(), indent=2, default=json_default) + "\n").encode())
        return self.shown / "report.json"


def json_default(o):
    if isinstance(o, (np.generic,)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")

