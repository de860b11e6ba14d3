"""Recording for localization (harness/locate/): every module call's inputs and outputs, the
gradients that arrive at each output, parameter gradients, and the state after an update.

Written once over the Runner's framework primitives (named_modules, hook_forward, hook_grad),
so torch and paddle record exactly the same things in the same shape. Only used when a check
failed or the user asked for --locate: the plain checks never install a hook.
"""

from __future__ import annotations

import contextlib

import numpy as np

from backends.masks import SharedMasks
from harness.safety.safeload import load_npy_dict


def entered_modules(runner, model, run) -> list:
    """The structured name of every module call in entry order (parents before the children
    they call; a shared module repeats per call), while run() computes one forward. Names
    only: this runs at set-up for the weight mapping (harness/mapping/pairing.py), so nothing is copied."""
    names: list = []
    removers: list = []
    for name, module in runner.named_modules(model):
        removers += runner.hook_forward(module, lambda args, kwargs, name=name: names.append(name) and None,
                                        lambda output: None)
    try:
        run()
    finally:
        for remove in removers:
            remove()
    return names


class Recorder:
    """Hooks on every module of a model; calls are keyed '<structured name>#<call index>'."""

    def __init__(self, runner, model):
        self.runner = runner
        self.calls: list = []  # in exit order: children before the module that called them
        self.entered: list = []  # call keys in entry order (parents first)
        self.out_grads: dict = {}  # call key -> {leaf: array}
        self._count: dict = {}
        self._open: list = []  # call keys being executed, innermost last
        self._exits = 0
        self._removers: list = []
        for name, module in runner.named_modules(model):
            self._removers += runner.hook_forward(module, self._pre(name, module), self._post(name, module))

    def close(self) -> None:
        for remove in self._removers:
            remove()
        self._removers = []

    def _leaves(self, value, prefix: str) -> dict:
        return {k: t for k, t in self.runner.tensor_leaves(value, prefix)}

    def _pre(self, name, module):
        def hook(args, kwargs):
            index = self._count.get(name, 0)
            self._count[name] = index + 1
            key = f"{name}#{index}"
            parent = self._open[-1] if self._open else None
            self._open.append(key)
            self.entered.append(key)
            # inputs copied at entry: an in-place module (ReLU(inplace=True)) overwrites them later
            leaves = self._leaves((tuple(args), dict(kwargs or {})), "in")
            inputs = {k: self.runner.keep(t) for k, t in leaves.items()}
            self.calls.append({"key": key, "name": name, "type": type(module).__name__, "parent": parent,
                               "inputs": inputs, "outputs": None})
        return hook

    def _post(self, name, module):
        def hook(output):
            key = self._open.pop() if self._open else f"{name}#?"
            record = next(c for c in reversed(self.calls) if c["key"] == key)
            leaves = self._leaves(output, "out")
            record["outputs"] = {k: self.runner.keep(t) for k, t in leaves.items()}
            record["exit"] = self._exits
            self._exits += 1
            for leaf, tensor in leaves.items():
                self.runner.hook_grad(tensor, self._grad(key, leaf))
        return hook

    def _grad(self, key, leaf):
        def hook(grad):
            self.out_grads.setdefault(key, {})[leaf] = self.runner.keep(grad)
        return hook


def traced_state(runner) -> dict:
    """The model's state and its trainable parameters, in shared memory for the coordinator: the
    parameters are the state's own files (written once), not a second copy."""
    state = runner.stash(runner.state_tensors(runner.model), worker_owned=False)
    tensors = runner.param_tensors(runner.model)
    missing = {k: t for k, t in tensors.items() if k not in state}
    params = {k: state[k] for k in tensors if k in state}
    params.update(runner.stash(missing, worker_owned=False))
    return {"state": state, "params": params}


def _gradients(runner, model, held: dict) -> dict:
    """This step's own gradients ("grads"); when gradients were held from earlier steps, also
    what the optimizer will apply ("applied": the sum)."""
    if not held:
        return {"grads": runner.stash(runner.grad_tensors(model), worker_owned=False)}
    applied = {k: runner.to_numpy(g) for k, g in runner.grad_tensors(model).items()}
    own = {k: g - held[k] if k in held else g for k, g in applied.items()}
    return {"grads": runner.shared(own), "applied": runner.shared(applied)}


class Tracer:
    """One traced training (or evaluation) run: begin() once, then step() per batch. masks: dropout
    masks shared with the other side (backends/masks.py, a training run's steps from `start`)."""

    def __init__(self, runner, mode: str, total_steps: int, cfg: dict, masks=None, start: int = 0):
        self.runner, self.mode, self.masks, self.index = runner, mode, masks, start
        runner.set_train(runner.model, mode == "train")
        self.stepper = runner.make_stepper(runner.model, cfg, total_steps)

    def step(self, batch: dict, backward: bool, update: bool, with_loss: bool) -> dict:
        # dropout off in train mode, as in the checks: each framework would draw its own masks; or
        # the masks both sides draw alike, as the training run drew them
        runner, masks = self.runner, self.masks
        if masks is not None:
            masks.begin(self.index)
        self.index += 1
        off = runner.dropout_off(runner.model) if self.mode == "train" else contextlib.nullcontext()
        with runner.dropout_shared(runner.model, masks) if masks is not None else off:
            return self._step(batch, backward, update, with_loss)

    def _step(self, batch: dict, backward: bool, update: bool, with_loss: bool) -> dict:
        runner, model = self.runner, self.runner.model
        # gradients an optimizer kept from earlier steps (it accumulates): this step's own are told apart
        held = runner.snapshot(runner.grad_tensors(model)) if backward else {}
        recorder = Recorder(runner, model)
        result: dict = {}
        try:
            # an evaluation step without autograd, unless the checks found the forward needs it
            grad_ctx = contextlib.nullcontext() if backward or runner.forward_needs_grad else runner.no_grad()
            with grad_ctx:
                t = runner.tensors(batch)
                output = runner.run_forward(t)
                result["output"] = runner.flatten(output)
                loss = runner.run_loss(output, t) if (with_loss or backward) else None
                if loss is not None:
                    result["loss"] = runner.scalar(loss)
            if backward:
                runner.backward(loss)
                result.update(_gradients(runner, model, held))
        finally:
            recorder.close()
        result["calls"] = [{k: v for k, v in c.items() if k != "exit"} for c in
                           sorted(recorder.calls, key=lambda c: c.get("exit", len(recorder.calls)))]
        result["entered"] = recorder.entered
        result["out_grads"] = recorder.out_grads
        if update:
            self.stepper.step()
            self.stepper.zero_grad()
            result.update(traced_state(runner))
        elif backward:
            self.stepper.zero_grad()
        return result


class TraceOps:
    """The ops localization and the weight mapping use (a mixin of backends/base.Runner)."""

    def call_order(self, batch: dict) -> dict:
        """The modules one eval-mode forward of `batch` calls, in call order: what pairs a port's
        modules with the reference's (harness/mapping/pairing.py). Grad stays enabled because under
        no_grad torch's TransformerEncoderLayer takes a fused path that calls none of its
        submodules. A forward that raises gives no order (the mapping says so) rather than
        failing here: the forward check reports that error where it belongs."""
        self._restore()
        self.set_train(self.model, False)
        with self.preserved_rng():
            try:
                names = entered_modules(self, self.model, lambda: self.run_forward(self.tensors(batch)))
            except Exception as exc:  # noqa: BLE001 - reported, and the forward check raises it again
                return {"calls": None, "error": f"{type(exc).__name__}: {exc}".splitlines()[0]}
        return {"calls": names, "error": None}

    def trace_begin(self, mode: str, total_steps: int, overrides: dict | None = None, kept: str | None = None,
                    masks: dict | None = None) -> dict:
        """Start a hooked run from the initial weights, or from a training run's kept evaluation
        (`kept`: its model and the schedule's place, each parameter's optimizer state afresh on both
        sides: the two kept states carry their own float32 round-off, which would read as a
        difference of the update; masks: as run_begin's), step by step (harness/locate/ drives it)."""
        self._restore()
        self._dirty = True
        state = load_npy_dict(kept) if kept is not None else None
        start = int(state["step"]) if state is not None else 0
        shared = SharedMasks(self.cfg["data"]["seed"], 0, masks) if masks is not None else None
        self._tracer = Tracer(self, mode, total_steps, self._config(overrides), shared, start)
        if state is not None:
            self.load_state(self.model, {k: np.asarray(v) for k, v in state["model"].items()})
            self._tracer.stepper.load(state["optimizer"], moments=False)
        return {**traced_state(self), "decay": self._tracer.stepper.decay}

    def trace_step(self, batch: dict, backward: bool = False, update: bool = False, with_loss: bool = True,
                   sync: dict | None = None, raw: bool = False) -> dict:
        """One hooked step; sync first loads the other side's state (so each step starts equal)."""
        if sync is not None:
            self.load_state(self.model, self.pair.torch_to_paddle(dict(sync)) if raw else dict(sync))
        return self._tracer.step(batch, backward, update, with_loss)
