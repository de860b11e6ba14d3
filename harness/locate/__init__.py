"""Where the two part ways: re-run the failing step with hooks on every module and name the first
module, parameter, gradient, update or buffer that differs. Framework-free.

  matching.py   which torch module is which paddle module
  leaves.py     comparing traced tensors (size-1 axes aligned) and the Finding
  forward.py    judging a traced forward pass
  upstream.py   which module's forward made a module's differing input
  gradients.py  judging a traced backward pass
  updates.py    judging the optimizer update and BatchNorm statistics
  driver.py     driving the workers step by step, choosing what to trace

May import: harness.errors, harness.config, harness.verdict, harness.report, harness.workers,
harness.mapping, harness.checks
"""

from harness.locate.driver import Context, apply, locate
from harness.locate.leaves import compare_loose

__all__ = ["Context", "apply", "compare_loose", "locate"]
