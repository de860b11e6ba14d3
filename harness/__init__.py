"""reprod-harness coordinator: framework-free (never imports torch, paddle or reprod_log).

The Python API is `harness.check` (harness/api.py); its errors are `harness.UsageError` (a bad
config, pair or argument) and `harness.WorkerError` (a worker raised, died or timed out)."""

__version__ = "0.1.0"

from harness.api import check  # noqa: E402  (after __version__, which the CLI imports from here)
from harness.errors import UsageError, WorkerError  # noqa: E402

__all__ = ["check", "UsageError", "WorkerError", "__version__"]
