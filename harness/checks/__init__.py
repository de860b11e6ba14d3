"""The checks of the reproduction guide, each a function of a started Session (harness/session.py):
outputs.py (forward, metric, loss, lr), training.py (backward, train), parallel.py (data-parallel
backward, dp-equivalence), common.py (compare, rules, write).

May import: harness.errors, harness.config, harness.verdict, harness.report, harness.workers
"""

from __future__ import annotations

from harness.checks import outputs, training

# name -> function(session) -> CheckResult, in the guide's order
CHECKS = {"forward": outputs.forward, "metric": outputs.metric, "loss": outputs.loss, "lr": outputs.lr,
          "backward": training.backward, "train": training.train}
