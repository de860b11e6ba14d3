"""The curves of a training run as they arrive: per step each side's loss and learning rate, per
evaluation each side's train loss over the interval, eval loss and metric, their points against
the band (harness/verdict/band.py) and whether every one was inside. Plain data, so it is saved
for --resume, written as the artifacts and drawn in report.html while the run goes on."""

from __future__ import annotations

import numpy as np

from harness.verdict import band
from harness.workers.protocol import SIDES


class Records:
    def __init__(self):
        self.loss: dict = {side: [] for side in SIDES}
        self.lr: dict = {side: [] for side in SIDES}
        self.evals: list = []  # {index, step, epoch, torch: {...}, paddle: {...}, points: [...], inside}

    @property
    def steps(self) -> int:
        return len(self.loss["torch"])

    def add_steps(self, out: dict) -> None:
        for side in SIDES:
            self.loss[side] += [float(v) for v in out[side]["loss"]]
            self.lr[side] += [float(v) for v in out[side]["lr"]]

    def first_lr_gap(self, start: int) -> int | None:
        """The first step from `start` whose learning rates differ, if any."""
        for i in range(start, self.steps):
            if band.lr_differs(self.lr["torch"][i], self.lr["paddle"][i]):
                return i
        return None

    def interval(self, side: str) -> list:
        """The per-step losses since the last evaluation."""
        since = self.evals[-1]["step"] if self.evals else 0
        return self.loss[side][since:]

    def add_eval(self, *, step: int, epoch: int, stats: dict, points: list, inside: bool) -> dict:
        entry = {"index": len(self.evals) + 1, "step": step, "epoch": epoch,
                 **{side: {"train_loss": s.train_loss, "eval_loss": s.eval_loss, "metric": dict(s.metric)}
                    for side, s in stats.items()},
                 "points": [pt.to_json() for pt in points], "inside": inside}
        self.evals.append(entry)
        return entry

    def truncate(self, steps: int) -> None:
        """Back to the first `steps` steps (a resumed run continues from a kept evaluation)."""
        for side in SIDES:
            del self.loss[side][steps:], self.lr[side][steps:]
        self.evals = [e for e in self.evals if e["step"] <= steps]

    def to_json(self) -> dict:
        return {"loss": self.loss, "lr": self.lr, "evals": self.evals}

    @classmethod
    def from_json(cls, data: dict) -> Records:
        records = cls()
        records.loss = {side: list(data["loss"][side]) for side in SIDES}
        records.lr = {side: list(data["lr"][side]) for side in SIDES}
        records.evals = list(data["evals"])
        return records

    def arrays(self, side: str) -> dict:
        """train_align_<side>.npy: the per-step curves, then one value per evaluation."""
        out = {"train_loss": np.asarray(self.loss[side], np.float64), "lr": np.asarray(self.lr[side], np.float64),
               "eval_step": np.asarray([e["step"] for e in self.evals], np.int64),
               "eval_train_loss": np.asarray([e[side]["train_loss"] for e in self.evals], np.float64),
               "eval_loss": np.asarray([e[side]["eval_loss"] for e in self.evals], np.float64)}
        for name in (self.evals[-1][side]["metric"] if self.evals else {}):
            out[f"eval_{name}"] = np.asarray([e[side]["metric"].get(name, np.nan) for e in self.evals], np.float64)
        return out
