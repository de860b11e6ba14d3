"""The train check. With [train] epochs or steps it is a training run (the guide's Step 5): both sides
train at once, chunk by chunk, on their data (harness/trainrun/plan.py), and evaluate together;
the coordinator compares the curves as they arrive against the band (harness/verdict/band.py),
keeps each side's state at every evaluation, stops both when the curves stay outside the band
for [train] patience evaluations (unless --no-early-stop) and has localization find where they
part (harness/trainrun/locating.py). Without them, the train check of harness/checks/training.py."""

from __future__ import annotations

import time

import numpy as np

from harness.checks import training
from harness.checks.common import check
from harness.trainrun import judging
from harness.trainrun.feeding import Feeder
from harness.trainrun.keep import Keeper
from harness.trainrun.live import Live
from harness.trainrun.plan import GIVEN, OWN, Plan, make_plan, mode_of
from harness.trainrun.records import Records
from harness.verdict import band
from harness.verdict.diff import CheckResult
from harness.workers.protocol import SIDES, Op, Request


@check
def train(session) -> CheckResult:
    if not session.cfg.train.is_run:
        return (yield from training.train.steps(session))
    mode = mode_of(session.cfg, session.data)
    descs = yield _describe(session, mode)
    return TrainingRun(session, make_plan(session.cfg, mode, descs, session.layout.nprocs)).execute()


def _describe(session, mode: str) -> dict:
    """What the plan needs of the train splits (data_open); make_batch's run needs nothing."""
    if mode == GIVEN:
        return session.for_both(Op.PING)
    sides = SIDES if mode == OWN else (session.cfg.data.source,)
    return {side: Request(Op.DATA_OPEN, {"split": "train", "batches": 0}) for side in sides}


class TrainingRun:
    def __init__(self, session, plan: Plan):
        self.session, self.plan, self.cfg = session, plan, session.cfg
        self.feeder = Feeder(session, plan)
        self.records = Records()
        self.patience = band.Patience(self.cfg.train.patience)
        self.keeper = Keeper(session.options.out_dir, self.cfg)
        self.live = Live(session, plan, self.keeper, self.view)
        self.regime, self.notes = plan.regime, list(plan.notes)
        self.stop: dict | None = None  # where and why the run stopped early
        self.lr_gap: int | None = None  # the first step whose learning rates differ
        self.located = None  # what localization found (harness/locate Outcome), once it ran
        self.wide: dict | None = None  # each side's final metric trained again in float64, when it was
        self.unshared = False  # a kernel drew dropout masks of its own: the two runs are not the same computation
        self.spot_checked = False  # kept with the run: one interrupted during the spot check does it on resuming
        self.resumed: int | None = None  # the step a resumed run continued from
        self.seconds = 0.0  # training and evaluating, localization apart

    # ------------------------------------------------------------------ the run
    def execute(self) -> CheckResult:
        start, skip = self._begin()
        for first, count in self.plan.chunks(start):
            started = time.perf_counter()
            self._chunk(first, count, skip)
            self.seconds += time.perf_counter() - started
            skip = 0
            if self.stop is None and first + count in self.plan.evals:
                skip = self._evaluate(first + count)
            if self.stop is not None:
                break
            self.live.chunk(self.records)
        self._final_in_float64()
        if self.located is None and (self.lr_gap is not None or not judging.result(self).passed):
            from harness.trainrun import locating  # localization loads only when a run needs it

            self.located = locating.locate_run(self)
        result = judging.result(self)
        result.located = self.located
        judging.write(self, result)
        self.keeper.remove()  # finished: what --resume would need is no longer needed
        return result

    def _final_in_float64(self) -> None:
        """A run that ended with its curves together but its final metrics apart: float64 decides
        (harness/trainrun/arbitration.py), unless --float32-only or the run is not paired."""
        if self.stop is not None or not self.session.options.arbitrate or self.plan.regime != band.PAIRED \
                or self.unshared:
            return
        if self.lr_gap is not None or judging.final_metric_passes(self):
            return
        from harness.trainrun import arbitration

        self.wide = arbitration.final_metric(self)

    def _begin(self) -> tuple:
        """Both sides begun (every rank), fresh or from the last kept evaluation: (step, batches of
        the own pass to read past)."""
        saved = self.keeper.begin(resume=self.session.options.resume)
        start, kept = 0, None
        if saved is not None:
            index = max(self.keeper.kept)
            self.records = Records.from_json(saved["records"])
            start = next(e["step"] for e in self.records.evals if e["index"] == index)
            self.records.truncate(start)
            self.patience.streak = [i for i in saved["streak"] if i <= index]
            self.patience.agreed = saved["agreed"]
            self.regime, kept, self.resumed = saved["regime"], self.keeper.kept[index], start
            self.unshared = saved.get("unshared", False)
            self.spot_checked = saved.get("spot_checked", False)
            self.notes += saved.get("notes", [])
            self.notes.append(f"resumed from evaluation {index} (step {start}) kept in {self.keeper.folder}")
        elif self.keeper.replaced:
            self.notes.append(f"the interrupted training run kept in {self.keeper.folder} was removed: this one started "
                              "from the beginning (--resume continues one)")
        self.live.start_step = start
        return start, self._start_from(kept)

    def _start_from(self, kept: dict | None) -> int:
        """RUN_BEGIN on every rank, from the initial weights or `kept` (each side's file); the
        batches of its own pass a side reads past (a run kept inside an epoch)."""
        sites = self.sites()
        total = self.cfg.lr_scheduler.total_steps or self.plan.total
        n, parallel = self.session.layout.nprocs, self.session.layout.world > 1
        requests = {name: Request(Op.RUN_BEGIN, {"total_steps": total, "kept": kept[side] if kept else None,
                                                 "masks": sites[side], "parallel": parallel, "rank": r, "nprocs": n})
                    for side in SIDES for r, name in enumerate(self.session.ranks[side])}
        begun = self.session.submit(requests, label="train").wait()
        return begun["torch"]["position"] if self.plan.mode == OWN else 0

    def sites(self) -> dict:
        """Each side's Dropout modules -> their mask site: paired ones share the torch name."""
        pairs = [d for d in (self.session.plan.dropouts if self.session.plan else [])
                 if not d.torch_site["functional"] and not d.paddle_site["functional"]]
        return {"torch": {d.torch: d.torch for d in pairs}, "paddle": {d.paddle: d.torch for d in pairs}}

    def _chunk(self, first: int, count: int, skip: int) -> None:
        out = self.session.submit(self.feeder.chunk(first, count, skip=skip), label="train").wait()
        per_side = {side: {"loss": np.mean([out[name]["loss"] for name in self.session.ranks[side]], axis=0),
                           "lr": out[side]["lr"]} for side in SIDES}
        self.records.add_steps(per_side)
        unshared = {side: sum(out[name]["unshared"] for name in self.session.ranks[side]) for side in SIDES}
        if any(unshared.values()) and not self.unshared:
            self.regime, self.unshared = band.INDEPENDENT, True
            self.notes.append(f"dropout drawn inside a kernel (attention's dropout_p, alpha dropout: "
                              f"{unshared['torch']} torch, {unshared['paddle']} paddle draws in steps {first}.."
                              f"{first + count - 1}) cannot share its masks: from there the curves are compared as "
                              "two samples of one random process (the independent band)")
        gap = self.records.first_lr_gap(first)
        if gap is not None and self.lr_gap is None:
            self.lr_gap = gap
            if self.session.options.early_stop:
                self.stop = {"why": "lr", "step": gap, "evaluation": None}

    def _evaluate(self, step: int) -> int:
        """Both sides evaluated, judged against the band and kept; localization when they stayed
        apart. Returns the batches of its own pass a side reads past (after a restart)."""
        started, out = time.perf_counter(), None
        for part in self.feeder.evaluations():
            out = self.session.submit(part, label="train").wait()
        self.seconds += time.perf_counter() - started
        stats = {side: _stats(self.records, side, out[side]) for side in SIDES}
        points = band.points(self.regime, stats["torch"], stats["paddle"])
        index = len(self.records.evals) + 1
        inside = self.patience.add(index, points)
        entry = self.records.add_eval(step=step, epoch=self.plan.epoch_of(step)[0], stats=stats, points=points,
                                      inside=inside)
        self.session.call({side: Request(Op.RUN_KEEP, {"path": self.keeper.path(index, side)}) for side in SIDES})
        self.keeper.keep(index, self.patience.agreed)
        self.save()
        self.live.evaluation(entry)
        if self.patience.exhausted and self.located is None:
            from harness.trainrun import arbitration

            if arbitration.curves(self, index) and self.stop is None:
                return self._start_from(self.keeper.kept[index])  # both continue from this evaluation
        elif not self.spot_checked and self.located is None:
            from harness.trainrun import arbitration

            arbitration.spot_check(self, index)
            if self.stop is None:
                return self._start_from(self.keeper.kept[index])
        return 0

    def save(self) -> None:
        self.keeper.save({"records": self.records.to_json(), "streak": self.patience.streak, "notes": self.notes,
                          "agreed": self.patience.agreed, "regime": self.regime, "unshared": self.unshared,
                          "spot_checked": self.spot_checked})

    def view(self) -> tuple:
        """The run so far as report.json will hold it, and each side's curves (the live report)."""
        return judging.partial(self).to_json(), {side: self.records.arrays(side) for side in SIDES}


def _stats(records: Records, side: str, evaluated: dict) -> band.Stats:
    """One side's values at this evaluation with their standard errors (harness/verdict/band.py)."""
    mean, noise = band.train_stats(records.interval(side))
    loss, metric = float(evaluated["loss"]), {k: float(v) for k, v in evaluated["metric"].items()}
    n = int(np.sum(evaluated["sizes"]))
    curve = [e[side]["eval_loss"] for e in records.evals] + [loss]
    loss_noise = band.combined(band.curve_noise(curve), band.eval_noise(evaluated["losses"], evaluated["sizes"]))
    metric_noise = {k: band.combined(band.curve_noise([e[side]["metric"].get(k, np.nan) for e in records.evals] + [v]),
                                     band.binomial(v, n)) for k, v in metric.items()}
    return band.Stats(mean, noise, loss, loss_noise, metric, metric_noise)
