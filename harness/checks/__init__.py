"""The checks of the reproduction guide, each a function of a started Session (harness/session.py):
data.py (the pair's own data; datadiff.py judges it), init.py (the fresh models' initialization;
initstats.py its statistics), outputs.py (forward, metric, loss, lr), training.py (backward,
train), parallel.py (data-parallel backward, dp-equivalence), common.py (compare, rules, write).

May import: harness.errors, harness.config, harness.verdict, harness.report, harness.workers
"""

from __future__ import annotations

from harness.checks import data, init, outputs, training

# name -> function(session) -> CheckResult, in the guide's order
CHECKS = {"data": data.data, "init": init.init, "forward": outputs.forward, "metric": outputs.metric,
          "loss": outputs.loss, "lr": outputs.lr, "backward": training.backward, "train": training.train}
# checks that float64 cannot decide and localization cannot trace: the data, and the models as built
PRECISION_FREE = ("data", "init")
