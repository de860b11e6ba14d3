"""One run's workers: the topology (a worker per framework, or N ranks each), the torch initial
weights shared with paddle, and calls to one side, both sides or every rank."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from harness.config.parse import mapping_error
from harness.config.schema import RunConfig
from harness.errors import UsageError
from harness.mapping import checkpoints, identify, layout, weights
from harness.pair.batches import BatchSource
from harness.report.artifacts import ArtifactWriter
from harness.workers import interpreters, ranks
from harness.workers.feed import Feed
from harness.workers.process import WorkerGroup, WorkerSpec
from harness.workers.protocol import SIDES, Op, Request

STARTUP_HINT = ("start-up: spawn, framework import, the pair's build, joining the ranks; "
                "raise --startup-timeout if that is just slow")
# joining the ranks' process groups is start-up; each worker's deadline is a step's once it has joined
JOINING = "start-up; raise --startup-timeout if that is just slow"
ADAPTIVE = ("adam", "adamw", "pair")  # a pair's own optimizer is unknown: treated as adaptive


@dataclass(frozen=True)
class RunOptions:
    out_dir: Path
    timeout: float = 900.0  # per call (a check's step), once the workers are up
    startup_timeout: float = 900.0  # spawn, framework import, the pair's build, weights shared
    device: str = "auto"  # auto | cpu | gpu
    threads: int | None = None  # per worker; None: half the cores each
    benchmark: Path | None = None  # reprod_log .npy with the metric the paddle run must reach
    weights: Path | None = None  # start both models from this checkpoint (.pt / .pdparams)
    layout: ranks.Layout | None = None  # None: [distributed] of the config
    dp_equivalence: bool = False
    locate: bool = False  # trace every module even when all checks pass (they always are on a failure)
    save_tensors: bool = False  # full parameter and gradient dumps whatever their size
    arbitrate: bool = True  # re-run a failed check in float64 to tell round-off from a difference
    interpreters: dict = field(default_factory=dict)  # side -> Interpreter of another environment; absent: ours
    early_stop: bool = True  # a training run stops when its curves leave the band ([train] patience)
    resume: bool = False  # a training run continues from the last evaluation its <out>.training kept


def worker_threads(requested: int | None) -> int:
    return requested or max(1, usable_cores() // 2)


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 2


def worker_specs(opts: RunOptions, layout: ranks.Layout, names: dict) -> list:
    """A worker per framework (per rank of each, `names`), with its threads, device and environment."""
    threads = worker_threads(opts.threads) if layout.nprocs == 1 else max(1, worker_threads(opts.threads) // layout.nprocs)
    ports = ranks.free_ports(1 + layout.world) if layout.world > 1 else []
    device = opts.device if not layout.devices else "gpu"
    # threads not fixed by the user: the busy workers share every core (backends/worker.CoreShare)
    budget = None if opts.threads else usable_cores()
    specs = []
    for side in SIDES:
        for r, name in enumerate(names[side]):
            env = (ranks.rank_env(side, r, layout, ports) if layout.world > 1
                   else ranks.device_env(side, r, layout))
            python = opts.interpreters[side].path if side in opts.interpreters else None
            specs.append(WorkerSpec(name, {"threads": threads, "thread_budget": budget, "device": device, "env": env},
                                    framework=side, python=python))
    return specs


def _batches(cfg: RunConfig, opts: RunOptions) -> BatchSource:
    return BatchSource(cfg, timeout=opts.timeout, startup_timeout=opts.startup_timeout)


def _deadline(opts: RunOptions, *, starting: bool, joining: bool) -> dict:
    """A submission's deadline: start-up's for the set-up, and for each rank until it reports it
    joined its process group (then a step's); a step's for the rest."""
    if starting:
        return {"timeout": opts.startup_timeout, "hint": STARTUP_HINT}
    if joining:
        return {"until_progress": (opts.startup_timeout, JOINING, "while joining the ranks")}
    return {}


class SetupView:
    """What the checks read of a session's set-up: the weight plan (or what the pair's own converter
    was identified to do), the optimizer's kind and the dropout sites. Session's base."""

    cfg: RunConfig
    infos: dict
    plan: weights.Plan | None
    identity: weights.Plan | None

    @property
    def torch_only(self) -> tuple:
        """torch tensors with no paddle counterpart (BatchNorm's batch counter), kept on load."""
        return tuple(name for name, _ in self.plan.dropped) if self.plan else ()

    @property
    def custom_optimizer(self) -> bool:
        return self.infos["torch"]["custom_optimizer"] or self.infos["paddle"]["custom_optimizer"]

    def adaptive(self, overrides: dict | None = None) -> bool:
        """Adam-type updates: noise-driven elements move by lr (harness/verdict/rules.py)."""
        if self.custom_optimizer:
            return True
        return (overrides or {}).get("optimizer", {}).get("name", self.cfg.optimizer.name) in ADAPTIVE

    def dropout(self) -> dict:
        """Per side, the modules that drop out (p > 0)."""
        return {side: [m["name"] for m in self.infos[side]["modules"] if m.get("dropout")] for side in SIDES}

    def by_torch_name(self, torch_arrays: dict, paddle_arrays: dict) -> tuple:
        """Paddle arrays renamed and laid out as torch's, so one key names one parameter; with the
        pair's own torch_to_paddle, a tensor no value identified is left out on both sides."""
        if self.plan is not None:
            return torch_arrays, self.plan.paddle_to_torch_names(paddle_arrays)
        paddle = self.identity.paddle_to_torch_names(paddle_arrays) if self.identity else {}
        return {k: v for k, v in torch_arrays.items() if k in paddle}, paddle


class Session(SetupView):
    """Both workers up, weights shared, then any sequence of checks (harness/checks/)."""

    def __init__(self, cfg: RunConfig, opts: RunOptions, progress: Callable[[str], None] = lambda msg: None,
                 *, writer: ArtifactWriter | None = None):
        self.cfg, self.options, self.progress = cfg, opts, progress
        self.data = _batches(cfg, opts)
        self.root_writer = self.writer = writer or ArtifactWriter(opts.out_dir)  # writer: the current precision's
        self.plan: weights.Plan | None = None
        self.identity: weights.Plan | None = None  # with the pair's torch_to_paddle: what each tensor became
        self.initial_torch: dict = {}
        self.precision = "float32"
        self.infos: dict = {}
        self.layout = opts.layout or ranks.Layout(nprocs=cfg.distributed.nprocs, backend=cfg.distributed.backend)
        ranks.validate(self.layout)
        n = self.layout.nprocs
        # rank 0 of each framework is named after it, so every single-process check runs there
        self.ranks = {side: [side] + [f"{side}.{r}" for r in range(1, n)] for side in SIDES}
        self.group = WorkerGroup(worker_specs(opts, self.layout, self.ranks), opts.timeout)
        self.group.on_progress = getattr(progress, "steps", None)  # per-step counts, when the display shows them
        self._starting, self._joined = False, False
        self.worker_pythons: dict = {}  # side -> its worker's interpreter, as the handshake found it

    # ------------------------------------------------------------------ calling workers
    def call(self, requests: dict) -> dict:
        """Worker name -> Request, all at once; returns worker name -> reply."""
        return self.submit(requests).wait()

    def submit(self, requests: dict, label: str | None = None):
        """Sent now, answered later (Submission.wait()): the workers run ahead meanwhile."""
        # start-up has its own limit, so a small per-step --timeout never fails it; joining the ranks'
        # process groups (the first data-parallel call: rendezvous, gloo/nccl set-up) is start-up too
        joining = not self._joined and any(r.kwargs.get("parallel") for r in requests.values())
        self._joined = self._joined or joining
        return self.group.submit(requests, label=label, **_deadline(self.options, starting=self._starting,
                                                                    joining=joining))

    @staticmethod
    def for_both(op: Op, **kwargs) -> dict:
        return {side: Request(op, kwargs) for side in SIDES}

    def both(self, op: Op, **kwargs) -> dict:
        return self.call(self.for_both(op, **kwargs))

    def every_rank(self, side: str, op: Op, **kwargs) -> dict:
        return self.call({name: Request(op, kwargs) for name in self.ranks[side]})

    def one(self, side: str, op: Op, **kwargs):
        return self.call({side: Request(op, kwargs)})[side]

    def seconds(self, side: str) -> float:
        return self.group.seconds(side)

    # ------------------------------------------------------------------ set-up
    def start(self) -> None:
        # the pair's import (and make_batch) in the data worker: a broken one is a usage error,
        # found before any framework worker starts
        self.cfg = checked_data(self.data, self.cfg)
        self.worker_pythons = interpreters.handshake(self.options.interpreters)
        self.progress("starting the torch and paddle workers")
        self.group.start()
        self._setup()

    def use(self, cfg: RunConfig) -> None:
        """The same workers serve another pair: both models rebuilt, weights shared again."""
        self.data.close()
        self.data = _batches(cfg, self.options)
        self.cfg = checked_data(self.data, cfg)
        self._setup()

    def use_precision(self, precision: str) -> None:
        """The same workers rebuild both models in `precision` (float64 arbitration) and start
        them from the run's torch initial weights, upcast, exactly as the first build did; their
        artifacts go to a subfolder named after the precision."""
        self.precision = precision
        root = self.root_writer
        # float32, the run's own precision (back from a training run's float64 localization): the root folder
        self.writer = root if precision == "float32" else ArtifactWriter(root.out_dir / precision,
                                                                        shown=root.shown / precision)
        self._setup(initial=self.initial_torch)

    def restart(self) -> None:
        """Fresh float32 workers (after a failure in another precision stopped them)."""
        self.group.close()
        self.data = getattr(self.data, "pair", self.data)  # a Feed's batches were in the closed workers' memory
        self.precision, self.writer = "float32", self.root_writer
        self.group.start()
        self._setup()

    def _setup(self, initial: dict | None = None) -> None:
        self._starting = True
        try:
            self._build(initial)
        finally:
            self._starting = False

    def _build(self, initial: dict | None) -> None:
        self.plan = self.identity = None
        built = self.submit(setup_requests(self, initial))
        if not needs_models(self.cfg):
            self.infos = {side: built.wait()[side] for side in SIDES}
            return
        self.data = feed(self.data, self.call, self.cfg)
        batch = self.data.batch(0)
        if self.layout.world > 1:
            ranks.validate(self.layout, next(iter(batch.values())).shape[0])
        # sent at once, so each side traces as soon as it is built rather than when both are. A
        # pair that converts its weights itself needs no call order for them: traced only if
        # localization runs (trace_call_order)
        traced = None if self.data.defines("torch_to_paddle") else self._trace(batch)
        infos = built.wait()
        self.infos = {side: infos[side] for side in SIDES}
        if traced is None and not self.infos["paddle"]["custom_mapping"]:
            traced = self._trace(batch)
        traces = {}
        if traced is not None:
            self.progress("tracing one forward on each side to pair the modules")
            traces = self._traced(traced)
        self.progress("sharing the torch initial weights with paddle")
        self._plan(traces)
        if initial is None:
            if self.options.weights is not None:
                checkpoints.load_into(self, self.options.weights)
            self._share_weights(self.one("torch", Op.EXPORT_STATE), torch_has_it=True)
        else:
            self._share_weights(initial, torch_has_it=False)
        known = self.plan or self.identity  # no_decay patterns are matched against torch's names on both sides
        if known is not None:
            self.every_rank("paddle", Op.REFERENCE_NAMES, names=known.torch_names())

    def _trace(self, batch: dict, sides: tuple = SIDES):
        # the pair's forward: timed as a step (--timeout), not as start-up, and named so
        return self.group.submit({side: Request(Op.CALL_ORDER, {"batch": batch}) for side in sides}, label="forward")

    def _traced(self, submission) -> dict:
        traces = submission.wait()
        for side, trace in traces.items():  # localization's matching reads the same order (harness/locate/matching.py)
            self.infos[side]["calls"] = trace["calls"]
        return traces

    def trace_call_order(self) -> None:
        """The modules each side's forward calls, in order, for localization: traced at set-up
        unless the pair converts its weights itself, then here, once."""
        missing = tuple(side for side in SIDES if "calls" not in self.infos[side])
        if missing:
            self._traced(self._trace(self.data.batch(0), missing))

    def _plan(self, traces: dict) -> None:
        if self.infos["paddle"]["custom_mapping"]:
            if self.cfg.mapping:
                raise UsageError(f"{self.cfg.source}: [mapping] and the pair's torch_to_paddle(state) both say how "
                                 "the weights convert: keep one (torch_to_paddle then does all of it)")
            return
        try:
            self.plan = weights.plan(self.infos["torch"]["modules"], self.infos["paddle"]["modules"],
                                     traces=traces, renames=self.cfg.mapping)
        except weights.RenameError as exc:
            raise mapping_error(self.cfg, exc.key, exc.reason) from None
        layout.measure(self)
        self.writer.text("weight_map.txt", self.plan.table())

    def _share_weights(self, state: dict, *, torch_has_it: bool) -> None:
        """Every worker starts from `state` (torch's). Readers first: torch rank 0 holds the
        files and replaces them when it loads."""
        self.every_rank("paddle", Op.IMPORT_STATE, **self.to_paddle(state))
        if self.plan is None:
            self.identity = identify.by_value(self, state)
        # every rank starts from rank 0's weights, as DDP would broadcast them
        self.call({name: Request(Op.LOAD_STATE, {"state": state}) for name in self.ranks["torch"][1:]})
        if not torch_has_it:
            self.one("torch", Op.LOAD_STATE, state=state)
            state = self.one("torch", Op.EXPORT_STATE)  # in this precision
        self.initial_torch = state

    def to_paddle(self, torch_state: dict) -> dict:
        """The arguments that load a torch state into paddle: through the plan, or the pair's own
        torch_to_paddle (raw) when it has one."""
        if self.plan is None:
            return {"state": torch_state, "raw": True}
        return {"state": self.plan.to_paddle(torch_state), "raw": False}

    def close(self) -> None:
        try:
            self.group.close()
        finally:
            self.data.close()


def checked_data(data: BatchSource, cfg: RunConfig) -> RunConfig:
    """The run's config with the checks the pair's data allows, its data checked before any
    framework worker starts (the pair's import and make_batch in the data worker)."""
    cfg = cfg.replace(checks=data.checks())
    if data.source == "make_batch" and needs_models(cfg):
        data.batch(0)  # a broken make_batch is a usage error: find it before any framework process starts
    return cfg


def setup_requests(session: Session, initial: dict | None) -> dict:
    """Every worker loads the pair and builds its model (unless the data check runs alone); rank 0
    of each side also summarises its fresh model for the init check, before any weight is copied."""
    init = "init" in session.cfg.checks and initial is None
    setup = {"cfg": session.cfg.to_wire(), "precision": session.precision, "build": needs_models(session.cfg)}
    return {name: Request(Op.SETUP, {**setup, "init": init and name in SIDES}) for name in session.group.names}


def needs_models(cfg: RunConfig) -> bool:
    """Whether any check needs the models (the data check alone needs the pair's data only)."""
    return any(c != "data" for c in cfg.checks)


def feed(data, call: Callable, cfg: RunConfig):
    """The batches every check runs on: make_batch's, or those of the [data] source's own data."""
    if data.source == "make_batch" or isinstance(data, Feed):
        return data
    return Feed(call, data.source, pair=data, heldout_count=cfg.data.eval_batches, check=data.check_keys)


def environment(session: Session) -> dict:
    """report.json's environment: versions, devices and the cpu threads each worker had."""
    env = {"python": platform.python_version(), "numpy": np.__version__}
    for side in SIDES:
        env[side] = session.infos.get(side, {}).get("version")
    env["devices"] = {side: session.infos.get(side, {}).get("device") for side in SIDES}
    spec = session.group.specs[0].options
    # up_to: the threads a worker takes while the others have nothing to do (None: fixed)
    env["cpu_threads"] = {"per_worker": spec["threads"], "up_to": spec["thread_budget"]}
    if session.worker_pythons:
        env["interpreters"] = session.worker_pythons
    return env
