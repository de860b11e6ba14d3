"""reprod-harness coordinator: framework-free (never imports torch, paddle or reprod_log).

The Python API is `harness.check` (harness/api.py); its errors are `harness.UsageError` (a bad
config, pair or argument) and `harness.WorkerError` (a worker raised, died or timed out).

The rooms, in the order a run meets them (each room's __init__ says what it holds and may import):

  cli.py, api.py, pytest_plugin.py   the command line, harness.check, the `reprod` fixture
  coordinator.py, session.py         a whole run; its workers up with the models built and weights shared
  config/    the TOML as values, the optimizer/scheduler table
  pair/      the user's pair module and the data made from it
  workers/   the worker processes, the protocol, data-parallel ranks
  mapping/   which module is which, each tensor converted, checkpoints
  checks/    data, init, forward, metric, loss, lr, backward, train, data-parallel
  verdict/   keys, the strict diff, tolerances, the named rules
  locate/    where the two part ways
  report/    report.json, reprod_log artifacts, console, report.html, plots
  safety/    reading files without running code; the artifacts folder
  errors.py  the domain errors, each an exit code
"""

__version__ = "0.1.0"

from harness.api import check  # noqa: E402  (after __version__, which the CLI imports from here)
from harness.errors import UsageError, WorkerError  # noqa: E402

__all__ = ["check", "UsageError", "WorkerError", "__version__"]
