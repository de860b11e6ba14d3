"""The coordinator: makes the data, drives both workers at once, diffs, decides, writes."""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from harness import distributed, locate, plot, weights
from harness.config import RunConfig
from harness.data import BatchSource
from harness.diff import CheckResult, compare_arrays, compare_dicts
from harness.errors import UsageError
from harness.process import WorkerGroup, WorkerSpec
from harness.protocol import Request
from harness.report import ArtifactWriter, Divergence, RunReport, diff_log_lines

SIDES = ("torch", "paddle")


@dataclass
class RunOptions:
    out_dir: Path
    timeout: float = 900.0
    device: str = "auto"  # auto | cpu | gpu
    threads: int | None = None  # per worker; None: half the cores each
    benchmark: Path | None = None  # reprod_log .npy with the metric the paddle run must reach
    weights: Path | None = None  # start both models from this checkpoint (.pt / .pdparams)
    layout: distributed.Layout | None = None  # None: [distributed] of the config
    dp_equivalence: bool = False
    locate: bool = False  # trace every module even when all checks pass (they always are on a failure)


def worker_threads(requested: int | None) -> int:
    return requested or max(1, (os.cpu_count() or 2) // 2)


class Session:
    """One run: both workers up, weights shared, then any sequence of checks."""

    def __init__(self, cfg: RunConfig, opts: RunOptions, progress: Callable[[str], None]):
        self.cfg, self.opts, self.progress = cfg, opts, progress
        self.benchmark = opts.benchmark
        self.data = BatchSource(cfg)
        self.writer = ArtifactWriter(opts.out_dir)
        self.plan: weights.Plan | None = None
        self.initial_torch: dict = {}
        self.infos: dict = {}
        self.layout = opts.layout or distributed.Layout(nprocs=cfg.distributed.nprocs, backend=cfg.distributed.backend)
        distributed.validate(self.layout)
        n = self.layout.nprocs
        # rank 0 of each framework is named after it, so every single-process check runs there
        self.ranks = {side: [side] + [f"{side}.{r}" for r in range(1, n)] for side in SIDES}
        threads = worker_threads(opts.threads) if n == 1 else max(1, worker_threads(opts.threads) // n)
        ports = distributed.free_ports(1 + self.layout.world) if self.layout.world > 1 else []
        specs = []
        for side in SIDES:
            for r, name in enumerate(self.ranks[side]):
                env = (distributed.rank_env(side, r, self.layout, ports) if self.layout.world > 1
                       else distributed.device_env(side, r, self.layout))
                device = opts.device if not self.layout.devices else "gpu"
                specs.append(WorkerSpec(name, {"threads": threads, "device": device, "env": env}, framework=side))
        self.group = WorkerGroup(specs, opts.timeout)

    def both(self, op: str, **kwargs) -> dict:
        return self.group.call({side: Request(op, kwargs) for side in SIDES})

    def every_rank(self, side: str, op: str, **kwargs) -> dict:
        return self.group.call({name: Request(op, kwargs) for name in self.ranks[side]})

    def one(self, side: str, op: str, **kwargs):
        return self.group.call({side: Request(op, kwargs)})[side]

    # ------------------------------------------------------------------ set-up
    def start(self) -> None:
        self.data.batch(0)  # a broken make_batch is a usage error: find it before any process starts
        self.progress("starting the torch and paddle workers")
        self.group.start()
        self.setup()

    def setup(self) -> None:
        """Build both models from self.cfg and share the weights (again after cfg and data were
        replaced: the same workers then serve another pair, as the localization tests do)."""
        self.plan = None
        self.data.batch(0)
        if self.layout.world > 1:
            distributed.validate(self.layout, next(iter(self.data.batch(0).values())).shape[0])
        infos = self.group.call({name: Request("setup", {"cfg": self.cfg.to_wire()}) for name in self.group.workers})
        self.infos = {side: infos[side] for side in SIDES}
        self.progress("sharing the torch initial weights with paddle")
        if not self.infos["paddle"]["custom_mapping"]:
            self.plan = weights.plan(self.infos["torch"]["modules"], self.infos["paddle"]["modules"])
            self.writer.text("weight_map.txt", self.plan.table())
        else:
            self.writer.text("weight_map.txt", "converted by the pair's torch_to_paddle(state)\n")
        if self.opts.weights is not None:
            self._load_checkpoint(self.opts.weights)
        state = self.one("torch", "export_state")
        self.initial_torch = state
        if self.layout.world > 1:  # every rank starts from rank 0's weights, as DDP would broadcast them
            self.group.call({name: Request("load_state", {"state": state}) for name in self.ranks["torch"][1:]})
        mapped = {"state": state, "raw": True} if self.plan is None else {"state": self.plan.to_paddle(state)}
        self.every_rank("paddle", "import_state", **mapped)

    def _load_checkpoint(self, path: Path) -> None:
        """--weights: both sides start from a checkpoint of either framework."""
        side = checkpoint_side(path)
        self.progress(f"loading {path.name} ({side} checkpoint)")
        state = self.one(side, "read_checkpoint", path=str(path))
        if side == "paddle":
            if self.plan is None:
                raise UsageError(f"--weights {path}: a paddle checkpoint needs the automatic mapping to reach torch "
                                 "(the pair defines its own torch_to_paddle); give a torch checkpoint instead")
            state = self.plan.to_torch(state)
        self.one("torch", "load_state", state=state, keep_own=self._torch_only())

    def convert(self, source: Path, target: Path) -> None:
        """`reprod-harness convert`: a checkpoint of one framework written as the other's, via the plan."""
        side = checkpoint_side(source)
        state = self.one(side, "read_checkpoint", path=str(source))
        if side == "torch":
            if self.plan is None:
                self.one("paddle", "import_state", state=state, raw=True)
                state = self.one("paddle", "export_state")
            else:
                state = self.plan.to_paddle(state)
            self.one("paddle", "write_checkpoint", state=state, path=str(target))
        else:
            if self.plan is None:
                raise UsageError("convert: paddle -> torch needs the automatic mapping (the pair defines torch_to_paddle)")
            self.one("torch", "write_checkpoint", state=self.plan.to_torch(state), path=str(target),
                     keep_own=self._torch_only())

    def _torch_only(self) -> tuple:
        return tuple(name for name, _ in self.plan.dropped)

    def close(self) -> None:
        self.group.close()

    # ------------------------------------------------------------------ checks
    def check_forward(self) -> CheckResult:
        out = self.both("forward", batch=self.data.batch(0))
        return self._record("forward", out["torch"], out["paddle"])

    def check_loss(self) -> CheckResult:
        out = self.both("loss", batch=self.data.batch(0))
        return self._record("loss", out["torch"], out["paddle"])

    def eval_steps(self) -> range:
        return range(self.cfg.data.eval_batches)

    def heldout_steps(self) -> range:
        """Batches the trained models are scored on: never among the training steps."""
        return range(HELDOUT_STEP, HELDOUT_STEP + self.cfg.data.eval_batches)

    def check_metric(self, overrides: dict | None = None) -> CheckResult:
        out = self.both("metric", batches=self.data.batches(self.eval_steps()), overrides=overrides)
        return self._record("metric", out["torch"], out["paddle"])

    def check_train(self) -> CheckResult:
        """The guide's step 5: train_iters steps in train mode, loss curves and final metric within
        the relative train tolerance (0.15 %), optionally the paddle metric against a benchmark."""
        iters = self.cfg.train.train_iters
        total = self.cfg.lr_scheduler.total_steps or iters
        out = self.both("train", batches=self.data.batches(range(iters)), mode="train", total_steps=total,
                        eval_batches=self.data.batches(self.heldout_steps()))
        sides = {side: {**{f"loss_{i}": v for i, v in enumerate(out[side]["loss"])},
                        **{f"metric_{k}": v for k, v in out[side]["metric"].items()}} for side in SIDES}
        buffers = self._running_means(out)
        result = compare_dicts("train", sides["torch"], sides["paddle"], self.cfg.tolerance)
        # running means are judged in absolute terms, like parameters: a relative rule would call
        # float noise on a mean near 0 a divergence
        for key, (t, p) in buffers.items():
            result.keys.append(compare_arrays(key, t, p, self.cfg.tolerance.backward))
            sides["torch"][key], sides["paddle"][key] = t, p
        if self.benchmark:
            self._against_benchmark(result, out["paddle"]["metric"])
        dropout = sorted({f"{side}:{m['name']}" for side in SIDES for m in self.infos[side]["modules"] if m.get("dropout")})
        if dropout:
            result.notes.append(
                f"the model has dropout ({', '.join(dropout[:3])}{'...' if len(dropout) > 3 else ''}): in train "
                "mode each framework draws its own masks, so the curves can differ in a correct port; set p = 0 "
                "for this check")
        self.writer.check(result, sides["torch"], sides["paddle"])
        note = plot.train_curve(self.writer.out_dir / "train_curve.png", out["torch"]["loss"], out["paddle"]["loss"],
                                self.cfg.name)
        if note:
            result.notes.append(note)
        return result

    def _running_means(self, out: dict) -> dict:
        """BatchNorm running means after training: train-mode losses never read them, so a momentum
        convention mix-up (paddle 0.9 = torch 0.1) shows only here or in the final metric. Running
        variances are left out: torch updates them with the unbiased batch variance, paddle with the
        biased one, a gap of up to 1/(N-1) in a correct port (`--locate` judges them with that gap)."""
        if self.plan is None:
            return {}
        paddle_means = self.plan.paddle_to_torch_names(out["paddle"]["buffers"])
        return {f"buffer:{name}": (value, paddle_means[name]) for name, value in out["torch"]["buffers"].items()
                if name.endswith("running_mean") and name in paddle_means}

    def _against_benchmark(self, result: CheckResult, paddle_metric: dict) -> None:
        from harness.compare import load_side

        reference = load_side(self.benchmark)
        tol = self.cfg.tolerance.train
        shared = [k for k in reference if k in paddle_metric or k.removeprefix("metric_") in paddle_metric]
        if not shared:
            raise UsageError(f"{self.benchmark}: no key matches the metric ({', '.join(paddle_metric)})")
        for key in shared:
            name = key.removeprefix("metric_")
            ref = np.asarray(reference[key], np.float64).reshape(())
            result.keys.append(compare_arrays(f"benchmark:{name}", ref, np.asarray(paddle_metric[name], np.float64), tol))

    def check_lr(self, overrides: dict | None = None) -> CheckResult:
        out = self.both("lr_schedule", total_steps=self.cfg.total_steps, overrides=overrides,
                        metrics=plateau_metrics(self.cfg.total_steps))
        name = (overrides or {}).get("lr_scheduler", {}).get("name", self.cfg.lr_scheduler.name)
        if self.infos["torch"]["custom_optimizer"] or self.infos["paddle"]["custom_optimizer"]:
            name = "pair"
        per_step = {side: {f"step_{i}_{name}_lr": v for i, v in enumerate(out[side]["lr"])} for side in SIDES}
        return self._record("lr", per_step["torch"], per_step["paddle"])

    def check_backward(self, overrides: dict | None = None, write: bool = True) -> CheckResult:
        """Loss of every step, then the updated parameters and the last gradients by torch name."""
        if self.layout.world > 1:
            return self.check_backward_parallel(overrides)
        iters = self.cfg.train.iters
        out = self.both("train", batches=self.data.batches(range(iters)), mode=self.cfg.train.mode,
                        total_steps=self.cfg.total_steps, overrides=overrides)
        losses = {side: {f"loss_{i}": v for i, v in enumerate(out[side]["loss"])} for side in SIDES}
        ref, other = dict(losses["torch"]), dict(losses["paddle"])
        result, params, grads = self._judge_updates(ref, other, out, overrides)
        if write:
            self.writer.arrays("bp_params_torch.npy", params["torch"])
            self.writer.arrays("bp_params_paddle.npy", params["paddle"])
            self.writer.arrays("bp_grads_torch.npy", grads["torch"])
            self.writer.arrays("bp_grads_paddle.npy", grads["paddle"])
            self.writer.check(result, ref, other)
            self.writer.arrays("bp_align_torch.npy", losses["torch"])  # the guide's file: losses only
            self.writer.arrays("bp_align_paddle.npy", losses["paddle"])
        return result

    def check_backward_parallel(self, overrides: dict | None = None) -> CheckResult:
        """N ranks per framework: per-rank and rank-averaged losses, parameters after the last
        step (rank 0) and that every rank holds the same parameters, paddle DP vs torch DDP."""
        iters = self.cfg.train.iters
        batches = self.data.batches(range(iters))
        requests = {}
        for side in SIDES:
            for r, name in enumerate(self.ranks[side]):
                shards = self._shards(batches, r)
                requests[name] = Request("train", {"batches": shards, "mode": self.cfg.train.mode, "parallel": True,
                                                   "total_steps": self.cfg.total_steps, "overrides": overrides})
        out = self.group.call(requests)
        ref, other, per_rank = {}, {}, {side: [] for side in SIDES}
        for side, target in (("torch", ref), ("paddle", other)):
            for r, name in enumerate(self.ranks[side]):
                losses = {f"loss_{i}": v for i, v in enumerate(out[name]["loss"])}
                per_rank[side].append(losses)
                target.update({f"rank{self.layout.global_rank0 + r}:{k}": v for k, v in losses.items()})
            target.update({f"loss_{i}": np.mean([np.float64(rk[f"loss_{i}"]) for rk in per_rank[side]]).astype(np.float32)
                           for i in range(iters)})
        result, params, _ = self._judge_updates(ref, other, out, overrides)
        if self._adaptive(overrides):
            distributed.judge_rank_losses(result, ref, other, SCALE_RTOL)
        for side in SIDES:  # DataParallel keeps ranks identical; a rank that drifted was never synchronized
            first = _flat(out[side]["params"])
            for r, name in enumerate(self.ranks[side][1:], 1):
                key = compare_arrays(f"sync:{side}:rank{r}", first, _flat(out[name]["params"]), self.cfg.tolerance.backward)
                result.keys.append(key)
        distributed.sync_notes(result)
        self.writer.check(result, ref, other)
        for side in SIDES:
            for r, losses in enumerate(per_rank[side]):
                self.writer.arrays(f"rank{r}/bp_align_{side}.npy", losses)
        self.writer.arrays("bp_params_torch.npy", params["torch"])
        self.writer.arrays("bp_params_paddle.npy", params["paddle"])
        return result

    def _shards(self, batches: list, local_rank: int) -> list:
        """This rank's rows of each global batch: contiguous, by global rank (DistributedBatchSampler)."""
        return [distributed.shard(b, self.layout.global_rank0 + local_rank, self.layout.world) for b in batches]

    def check_dp_equivalence(self) -> CheckResult:
        """Each framework's N-rank run against its own 1-rank run on the same global batches:
        wrong loss scaling, unsynchronized BatchNorm or non-averaged gradients show here. Judged
        like the backward check (parameters against their update, noise-driven elements under an
        adaptive optimizer set aside): summing gradients over ranks rounds differently."""
        iters = self.cfg.train.iters
        kwargs = {"batches": self.data.batches(range(iters)), "mode": self.cfg.train.mode,
                  "total_steps": self.cfg.total_steps}
        single = self.both("train", **kwargs)
        requests = {name: Request("train", {**kwargs, "batches": self._shards(kwargs["batches"], r), "parallel": True})
                    for side in SIDES for r, name in enumerate(self.ranks[side])}
        multi = self.group.call(requests)
        adaptive = self._adaptive(None)
        result, one, many = CheckResult("dp_equivalence"), {}, {}
        for side in SIDES:
            a = {f"loss_{i}": np.asarray(single[side]["loss"][i]) for i in range(iters)}
            b = {f"loss_{i}": np.mean([np.float64(multi[name]["loss"][i]) for name in self.ranks[side]]).astype(np.float32)
                 for i in range(iters)}
            # paddle tensors under torch names where the plan knows them, so torch's initial state is the start of both
            named = (lambda x: x) if side == "torch" or self.plan is None else self.plan.paddle_to_torch_names
            initial = self.initial_torch if side == "torch" or self.plan is not None else {}
            grads_a, grads_b = named(single[side]["grads"]), named(multi[side]["grads"])
            a.update({**_prefixed("param:", named(single[side]["params"])), **_prefixed("grad:", grads_a)})
            b.update({**_prefixed("param:", named(multi[side]["params"])), **_prefixed("grad:", grads_b)})
            part = compare_dicts("backward", a, b, self.cfg.tolerance)
            judge_by_scale(part, a, b, initial, grads_a, grads_b, adaptive)
            for key in part.keys:
                key.key = f"{side}:{key.key}"
            result.keys += part.keys
            result.notes += [f"{side}:{note}" for note in part.notes]
            one.update(_prefixed(f"{side}:", a))
            many.update(_prefixed(f"{side}:", b))
        note = distributed.batchnorm_note(self.infos, self.cfg.train.mode)
        if note and not result.passed:
            result.notes.append(note)
        # not torch vs paddle here: the files are named after the two runs
        n = self.layout.nprocs
        self.writer.arrays("dp_equivalence_1rank.npy", one)
        self.writer.arrays(f"dp_equivalence_{n}rank.npy", many)
        self.writer.text("dp_equivalence_diff.log", "\n".join(diff_log_lines(result, one, many)) + "\n")
        return result

    def _judge_updates(self, ref: dict, other: dict, out: dict, overrides: dict | None) -> tuple:
        """Adds the parameters after the last step and the last gradients (by torch name) to the
        loss keys in ref/other, compares them all and applies the scale rules of judge_by_scale."""
        params = dict(zip(SIDES, self._by_torch_name(out["torch"]["params"], out["paddle"]["params"])))
        grads = dict(zip(SIDES, self._by_torch_name(out["torch"]["grads"], out["paddle"]["grads"])))
        for side, target in (("torch", ref), ("paddle", other)):
            target.update({**_prefixed("param:", params[side]), **_prefixed("grad:", grads[side])})
        result = compare_dicts("backward", ref, other, self.cfg.tolerance)
        self._note_unmapped(result)
        judge_by_scale(result, ref, other, self.initial_torch, grads["torch"], grads["paddle"], self._adaptive(overrides))
        return result, params, grads

    def _adaptive(self, overrides: dict | None) -> bool:
        """Adam-type updates (or a pair's own optimizer, unknown): noise-driven elements move by lr."""
        return self._optimizer_name(overrides) in ("adam", "adamw", "pair")

    def _optimizer_name(self, overrides: dict | None) -> str:
        if self.infos["torch"]["custom_optimizer"] or self.infos["paddle"]["custom_optimizer"]:
            return "pair"
        return (overrides or {}).get("optimizer", {}).get("name", self.cfg.optimizer.name)

    def _by_torch_name(self, torch_arrays: dict, paddle_arrays: dict) -> tuple:
        """Paddle parameters renamed and laid out as torch's, so one key names one parameter. With
        the pair's own torch_to_paddle the correspondence is unknown: nothing is compared (noted)."""
        if self.plan is None:
            return {}, {}
        return torch_arrays, self.plan.paddle_to_torch_names(paddle_arrays)

    def _note_unmapped(self, result: CheckResult) -> None:
        if self.plan is None:
            result.notes.append("parameters and gradients not compared: the pair converts weights with its own "
                                "torch_to_paddle, so which paddle tensor is which torch one is unknown; losses are compared")

    def _record(self, name: str, ref: dict, other: dict) -> CheckResult:
        result = compare_dicts(name, ref, other, self.cfg.tolerance)
        self.writer.check(result, ref, other)
        return result

    def environment(self) -> dict:
        env = {"python": platform.python_version(), "numpy": np.__version__}
        for side in SIDES:
            info = self.infos.get(side, {})
            env[side] = info.get("version")
        env["devices"] = {side: self.infos.get(side, {}).get("device") for side in SIDES}
        return env


CHECK_METHODS = {
    "forward": Session.check_forward,
    "metric": Session.check_metric,
    "loss": Session.check_loss,
    "lr": Session.check_lr,
    "backward": Session.check_backward,
    "train": Session.check_train,
}
# The held-out evaluation batches of the train check are make_batch(rng, step) at these steps.
HELDOUT_STEP = 1_000_000

# A parameter whose gradient is this small against the largest one is driven by rounding noise.
UNCONSTRAINED_RATIO = 1e-6
# Parameters are judged against the size of their update, gradients against their own size:
# float32 noise in a correct port stays near 1e-5 of either, a wrong decay or clip reaches 1e-3.
SCALE_RTOL = 1e-4


def plateau_metrics(steps: int) -> list:
    """A fixed loss sequence for the lr check: improving, then flat with small noise below any
    threshold, then improving again, so a plateau schedule must decide to drop and to wait."""
    return [1.0 / (1 + i) if i < 2 or i >= 12 else 0.5 + 1e-6 * (i % 2) for i in range(steps)]


def _flat(arrays: dict) -> np.ndarray:
    return np.concatenate([np.asarray(arrays[k], np.float64).reshape(-1) for k in sorted(arrays)]) if arrays else np.zeros(0)


def _prefixed(prefix: str, arrays: dict) -> dict:
    return {f"{prefix}{k}": v for k, v in arrays.items()}


def judge_by_scale(result: CheckResult, ref: dict, other: dict, initial: dict,
                   grads_torch: dict, grads_paddle: dict, adaptive: bool) -> None:
    """Second look at parameter and gradient keys that failed the absolute rule (FACTS.md traps).

    - Under an Adam-type optimizer, elements whose true gradient is zero (a bias before
      BatchNorm, the key part of attention's fused in_proj_bias) take each framework's rounding
      noise, divided by sqrt(v), as a full step of size lr. Those elements are unconstrained:
      left out of the judgement and reported, the rest of the tensor still judged.
    - A parameter then passes when its difference is within SCALE_RTOL of its update (after -
      before), a gradient when within SCALE_RTOL of its mean magnitude.
    """
    scale = max((float(np.abs(g).max()) for g in grads_torch.values() if g.size), default=0.0)
    for key in result.keys:
        if key.passed or key.mean_abs is None or key.nonfinite or ":" not in key.key:
            continue
        kind, name = key.key.split(":", 1)
        a, b = np.asarray(ref[key.key], np.float64), np.asarray(other[key.key], np.float64)
        keep = np.ones(a.shape, bool)
        if kind == "param" and adaptive and scale > 0 and name in grads_torch and name in grads_paddle:
            g = np.maximum(np.abs(grads_torch[name]), np.abs(grads_paddle[name]))
            keep = g > UNCONSTRAINED_RATIO * scale
            if not keep.any():
                _release(result, key, f"unconstrained: its gradient is rounding noise (max |g| {g.max():.2g} vs "
                         f"{scale:.2g} largest), which an adaptive optimizer turns into steps of size lr; "
                         "its value is not judged")
                continue
        d = np.abs(a - b)[keep]
        if kind == "param" and name in initial:
            size = float(np.mean(np.abs(a - initial[name])[keep]))
            what = "its update"
        elif kind == "grad":
            size = float(np.mean(np.abs(a)))
            what = "the gradient"
        else:
            continue
        within_abs = d.mean() <= key.threshold and d.max() <= key.max_threshold
        within_scale = d.mean() <= SCALE_RTOL * size and d.max() <= 100 * SCALE_RTOL * size
        if within_abs or within_scale:
            why = "" if keep.all() else (f"{int((~keep).sum())} of {keep.size} elements unconstrained (gradient is "
                                         "rounding noise under an adaptive optimizer), the others ")
            why += "within the threshold" if within_abs else f"within {SCALE_RTOL:g} of the size of {what} (mean {size:.2g})"
            _release(result, key, why, note_only=keep.all())


def _release(result: CheckResult, key, why: str, note_only: bool = False) -> None:
    key.note = f"{why} [{key.reason}]"
    key.passed, key.reason = True, ""
    if not note_only:
        result.notes.append(f"{key.key}: {why}")


CHECKPOINT_SUFFIXES = {".pt": "torch", ".pth": "torch", ".bin": "torch", ".pdparams": "paddle"}


def checkpoint_side(path: Path) -> str:
    side = CHECKPOINT_SUFFIXES.get(Path(path).suffix)
    if side is None:
        raise UsageError(f"{path}: unknown checkpoint type (expected {', '.join(CHECKPOINT_SUFFIXES)})")
    if not Path(path).is_file():
        raise UsageError(f"{path}: file not found")
    return side


def first_divergence(checks: list) -> Divergence | None:
    for check in checks:
        if not check.passed:
            bad = check.failing
            if not bad:
                return Divergence(check.name, "check", detail=check.why)
            key = bad[0]
            last = key.key.rsplit(":", 1)[-1]  # "loss_3", or per rank / framework "rank1:loss_3"
            step = int(last[5:]) if last.startswith("loss_") and last[5:].isdigit() else None
            return Divergence(check.name, "output", step=step, detail=f"{key.key}: {key.reason}")
    return None


def run(cfg: RunConfig, opts: RunOptions, progress: Callable[[str], None] = lambda msg: None) -> RunReport:
    unsupported = [c for c in cfg.checks if c not in CHECK_METHODS]
    if unsupported:
        raise UsageError(f"{cfg.source}: checks {unsupported} are not available in this version")
    started = time.perf_counter()
    session = Session(cfg, opts, progress)
    report = RunReport(cfg.name, Path(opts.out_dir))
    try:
        session.start()
        for name in cfg.checks:
            progress(f"{name} check")
            report.checks.append(CHECK_METHODS[name](session))
        if opts.dp_equivalence:
            progress("dp equivalence: N ranks vs 1 rank in each framework")
            report.checks.append(session.check_dp_equivalence())
        located = None
        if opts.locate or not all(c.passed for c in report.checks):
            progress("locating the first divergence (hooks on every module)")
            located = locate.locate(session, report.checks, always=opts.locate)
    finally:
        timing = {side: round(session.group.seconds(side), 3) for side in SIDES}
        session.close()
    report.environment = session.environment()
    report.timing = {"wall_s": round(time.perf_counter() - started, 3),
                     "torch_s": timing["torch"], "paddle_s": timing["paddle"]}
    report.first_divergence = first_divergence(report.checks)
    if located is not None:
        locate.apply(located, report)
    session.writer.report(report)
    return report
