"""`reprod-harness compare A.npy B.npy`: the guide's "load two reprod_log files and report" step,
with the strict verdict."""

from __future__ import annotations

from pathlib import Path

from harness.errors import UsageError
from harness.report.artifacts import atomic_write, diff_log_lines
from harness.safety.safeload import BrokenFile, UnsafeFile, load_npy_dict
from harness.verdict.diff import CheckResult, compare_dicts
from harness.verdict.keys import values
from harness.verdict.tolerance import Tolerance


def load_side(path: Path) -> dict:
    if not path.is_file():
        raise UsageError(f"{path}: file not found")
    try:
        data = load_npy_dict(path)  # never runs code from the file
    except (UnsafeFile, BrokenFile) as exc:  # each names the file and what is wrong, in one line
        raise UsageError(str(exc)) from None
    except Exception as exc:  # np.load raises many types for a file that is not .npy
        raise UsageError(f"{path}: cannot read as a reprod_log .npy file ({type(exc).__name__}: {exc})") from None
    nested = [k for k, v in data.items() if isinstance(v, dict)]
    if nested:
        data = _flatten(data)
    return data


def _flatten(data: dict, prefix: str = "") -> dict:
    """reprod_log allows nested dicts; keys become dotted paths."""
    out = {}
    for k, v in data.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, f"{name}."))
        else:
            out[name] = v
    return out


def compare_files(ref: Path, other: Path, *, threshold: float, max_threshold: float | None = None,
                  log: Path | None = None, allow_nan: bool = False) -> CheckResult:
    a, b = values(load_side(ref)), values(load_side(other))
    result = compare_dicts("compare", a, b, Tolerance(threshold, max_threshold, allow_nan=allow_nan))
    if log is not None:
        try:
            atomic_write(log, ("\n".join(diff_log_lines(result, a, b)) + "\n").encode())
        except OSError as exc:
            raise UsageError(f"--log {log}: cannot write it: {exc.strerror or exc}") from None
    return result
