"""The worker side of the protocol: what each op of harness.workers.protocol.Op does, written once over the
framework primitives (backends/primitives.py), so the two sides cannot drift apart. Nothing here
imports a framework."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from backends.layout import LayoutOps
from backends.metrics import MetricOps
from backends.pairdata import DataOps
from backends.primitives import Primitives
from backends.state import StateOps, init_summary
from backends.trace import TraceOps
from backends.training import TrainOps
from backends.trainrun import RunOps
from harness.config.optim_table import MAX_LR_STEPS, schedule_reach
from harness.pair import loader
from harness.workers.protocol import Op

NEEDS_NO_MODEL = (Op.SETUP, Op.PING, Op.DATA_OPEN, Op.DATA_ITEMS, Op.DATA_BATCHES)  # the data needs the pair only
# ops across which the forward check's output is kept for the loss check (checks run forward,
# metric, loss, lr in order); any other op drops it, so no model output is held through training.
# Whether it still applies is decided by the initial state it came from (Runner._output_of).
KEEPS_FORWARD = (Op.FORWARD, Op.METRIC, Op.LOSS, Op.LR_SCHEDULE, Op.PING, Op.EXPORT_STATE, Op.DATA_OPEN, Op.DATA_ITEMS,
                 Op.DATA_BATCHES)


class Runner(StateOps, TraceOps, LayoutOps, TrainOps, RunOps, DataOps, MetricOps, Primitives):
    def __init__(self, options: dict):
        self.options = options
        self.cfg: dict = {}
        self.pair = None
        self.model = None
        self._initial: dict | None = None
        self._retired: list = []  # handles of earlier initial states, removed once a new one is kept
        self._dirty = False  # weights moved since the initial state was taken
        self._parallel = None  # the DataParallel wrapper of a rank, made on first use
        self._forward_model = None  # the wrapper while a data-parallel step runs
        self._tracer = None
        self._eval_forward = None  # (initial state, batch, output) of the last forward check
        self.forward_needs_grad = False  # this model's forward fails under no_grad (see eval_forward)
        self._data: dict = {}  # split -> backends.pairdata.Split: the pair's own data, made on first use
        self._evaluation = None  # the metric of a streamed eval split, between its parts
        self.reference_names: dict = {}  # this side's parameter name -> torch's, for no_decay (set_reference_names)
        self._run = None  # the training run under way (backends/trainrun.py)
        self._run_eval = None  # its evaluation, between the parts of a streamed eval split
        self.progress = lambda done, total: None  # the worker loop sends these to the coordinator
        # called between a step's forward, backward and update: the worker may resize the
        # framework's thread pool there (backends/worker.CoreShare), as at each step's end
        self.between_kernels = lambda: None
        self._ops = {Op.PING: self.ping, Op.SETUP: self.setup, Op.CALL_ORDER: self.call_order,
                     Op.EXPORT_STATE: self.export_state,
                     Op.IMPORT_STATE: self.import_state, Op.LOAD_STATE: self.load_into_model,
                     Op.REFERENCE_NAMES: self.set_reference_names,
                     Op.READ_CHECKPOINT: self.read_state_file, Op.WRITE_CHECKPOINT: self.write_state_file,
                     Op.FORWARD: self.forward, Op.LOSS: self.loss, Op.METRIC: self.metric,
                     Op.LR_SCHEDULE: self.lr_schedule, Op.TRAIN: self.train, Op.TRACE_BEGIN: self.trace_begin,
                     Op.TRACE_STEP: self.trace_step, Op.RECORD_PROBES: self.record_probes,
                     Op.REPLAY_PROBES: self.replay_probes, Op.DATA_OPEN: self.data_open,
                     Op.DATA_ITEMS: self.data_items, Op.DATA_BATCHES: self.data_batches,
                     Op.RUN_BEGIN: self.run_begin, Op.RUN_ORDER: self.run_order, Op.RUN_STEPS: self.run_steps,
                     Op.RUN_EVAL: self.run_eval, Op.RUN_KEEP: self.run_keep}
        missing = [op.value for op in Op if op not in self._ops]
        if missing:
            raise TypeError(f"{type(self).__name__} does not serve {missing}")

    def handle(self, op: Op, kwargs: dict):
        if op not in (Op.SETUP, Op.PING) and (self.pair is None or op not in NEEDS_NO_MODEL and self.model is None):
            raise RuntimeError(f"'{op}' before 'setup'")
        if Op(op) not in KEEPS_FORWARD:
            self._eval_forward = None
        return self._ops[Op(op)](**kwargs)

    # ---------------------------------------------------------------- the pair's functions
    def pair_fn(self, stem: str):
        return getattr(self.pair, f"{stem}_{self.framework}", None)

    def run_forward(self, batch: dict):
        model = self._forward_model or self.model
        custom = self.pair_fn("forward")
        if custom is not None:
            return custom(model, batch)
        inputs = self.cfg["data"]["inputs"]
        if inputs is None:
            labels = set(self.cfg["data"]["labels"])
            inputs = [k for k in batch if k not in labels]
        return model(*[batch[k] for k in inputs])

    def eval_forward(self, t: dict):
        """An evaluation's forward, under no_grad so that no activation is held for a backward. A
        forward that fails there (one that registers a gradient hook, as PaDiff's tests do, or calls
        autograd itself) runs again with autograd on, and so does every later one of this model; a
        forward that fails either way raises its error from the second run."""
        if not self.forward_needs_grad:
            try:
                with self.no_grad():
                    return self.run_forward(t)
            except Exception:  # noqa: BLE001 - run again below, where a real error raises
                pass
        output = self.run_forward(t)
        self.forward_needs_grad = True
        return output

    def forward_source(self) -> str:
        """The function whose return value the outputs are, as messages name it."""
        if self.pair_fn("forward") is not None:
            return f"forward_{self.framework}"
        return f"the forward of build_{self.framework}()'s model"

    def run_loss(self, output, batch: dict):
        kind = self.cfg["loss"]["kind"]
        if kind == "pair":
            fn = self.pair_fn("loss")
            if fn is None:
                raise ValueError(f"[loss] kind = \"pair\" but the pair module defines no loss_{self.framework}")
            loss = fn(output, batch)
            if not isinstance(loss, self.tensor_types):
                raise TypeError(f"loss_{self.framework} returned a {type(loss).__module__}.{type(loss).__qualname__}, "
                                "expected a scalar tensor")
            return loss
        labels = batch[self.cfg["data"]["labels"][0]]
        return self.builtin_loss(kind, self.first_tensor(output, self.cfg["loss"]["output"]), labels)

    # ---------------------------------------------------------------- set-up and state
    def ping(self, payload=None):
        """Transport check: describes what arrived (an array, or a dict of them), every byte read."""
        if payload is None:
            return None
        arrays = list(payload.values()) if isinstance(payload, dict) else [payload]
        return {"shape": list(np.shape(arrays[0])) if len(arrays) == 1 else [len(arrays)],
                "sum": float(sum(np.sum(a) for a in arrays))}

    def setup(self, cfg: dict, precision: str = "float32", build: bool = True, init: bool = False) -> dict:
        """Loads the pair and builds its model (not for a run of the data check alone); `init`: the
        fresh model's per-tensor summary for the init check, taken before any weight is loaded."""
        self.cfg = cfg
        self.use_precision(precision)
        path = Path(cfg["pair"])
        self.pair = loader.load(path, keep=self.framework, where=f"{self.framework} worker")
        self._data = {}
        if not build:
            return {"framework": self.framework, "version": self.version(), "device": self.device(), "modules": [],
                    "custom_mapping": False, "custom_optimizer": False}
        info = self._build_model(path)
        if init:
            info["init"] = init_summary(self, self.cfg["data"]["seed"])
        return info

    def _build_model(self, path: Path) -> dict:
        build = self.pair_fn("build")
        if build is None:
            raise ValueError(f"{path} defines no build_{self.framework}")
        self.seed_all(self.cfg["data"]["seed"])
        model = build()
        self._parallel = None  # a wrapper of the previous model would train that one
        self.reference_names = {}
        # the previous model's state must never be restored into this one; its files stay readable
        # (the coordinator may start the new model from them) until this worker keeps a new state
        self._retired += list((self._initial or {}).values())
        self._initial, self._dirty, self.forward_needs_grad = None, False, False
        expected = self.model_type()
        if not isinstance(model, expected):
            raise TypeError(f"build_{self.framework}() returned {type(model).__module__}.{type(model).__name__}, "
                            f"expected a {expected.__module__}.{expected.__name__}")
        self.model = self.to_device(model)
        return {"framework": self.framework, "version": self.version(), "device": self.device(),
                "modules": self.module_table(self.model),
                "custom_mapping": callable(getattr(self.pair, "torch_to_paddle", None)),
                "custom_optimizer": self.pair_fn("optimizer") is not None}

    def _config(self, overrides: dict | None) -> dict:
        """The run config with some sections replaced (the optimizer matrix reuses one session)."""
        cfg = dict(self.cfg)
        for section, values in (overrides or {}).items():
            cfg[section] = {**cfg[section], **values}
        return cfg

    # ---------------------------------------------------------------- checks without training
    def forward(self, batch: dict) -> dict:
        self._restore()
        self.set_train(self.model, False)
        output = self.eval_forward(self.tensors(batch))
        out = self.flatten(output, source=self.forward_source())
        if not out:
            raise ValueError("the model output holds no tensor")
        if self._initial is not None:
            self._eval_forward = (self._initial, batch, output)
        return out

    def loss(self, batch: dict) -> dict:
        self._restore()
        self.set_train(self.model, False)
        t = self.tensors(batch)
        output = self._output_of(batch, t)
        with self.no_grad():
            return {"loss": self.scalar(self.run_loss(output, t))}

    def _output_of(self, batch: dict, t: dict):
        """The eval forward of batch from the initial weights: the forward check's own output when it
        was that batch (an eval forward is deterministic), else computed now."""
        cached, self._eval_forward = self._eval_forward, None
        if cached is not None and cached[0] is self._initial and _same_batch(cached[1], batch):
            return cached[2]
        return self.eval_forward(t)

    def lr_schedule(self, total_steps: int, overrides: dict | None = None, metrics: list | None = None,
                    steps: int | None = None) -> dict:
        """The lr of each step of a schedule built for total_steps, read from the framework's own
        scheduler: `steps` of them, or as far as the schedule reaches (optim_table.schedule_reach:
        at least total_steps, at most MAX_LR_STEPS). metrics drive a plateau schedule (the same
        sequence on both sides; a step past its end has none, which both sides skip alike)."""
        self._restore()
        stepper = self.make_stepper(self.model, self._config(overrides), total_steps)
        if steps is None:
            steps = min(max(total_steps, schedule_reach(stepper.scheduler)), MAX_LR_STEPS)
        lrs = []
        for i in range(steps):
            lrs.append(stepper.lr())
            try:
                stepper.advance(metrics[i] if metrics and i < len(metrics) else None)
            except Exception:  # noqa: BLE001 - a schedule with an end (OneCycleLR) refuses steps past it
                if i + 1 < total_steps:
                    raise
                break  # read as far as it goes: steps the other side has and this one not are named
        return {"lr": np.asarray(lrs, dtype=np.float64)}


def _same_batch(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
