"""What each framework must supply: abstract primitives (tensors, modules, state, loss, optimizer,
hooks), and the generic helpers written once over them. A backend that forgets a primitive fails
at start-up, naming it (Python refuses to instantiate the class), never with a silent None."""

from __future__ import annotations

import abc
import contextlib
import functools

import numpy as np

from harness.workers.protocol import Deferred, write_shared

TRACE_SHM_MIN_BYTES = 64 << 10
# attributes that hold the probability an attention module passes to a functional dropout:
# torch's MultiheadAttention and paddle's MultiHeadAttention `dropout`, HF's sdpa `dropout_prob`
FUNCTIONAL_DROPOUT = ("dropout", "dropout_p", "dropout_prob", "attention_dropout", "attn_dropout")


def class_path(obj) -> str:
    """paddle.compat.nn.Linear or paddle.nn.layer.common.Linear: the weight plan's type rule tells them apart."""
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def dropout_site(module) -> dict | None:
    """Where a module drops out, for pairing the dropouts of the two sides (harness/mapping/dropouts.py):
    a Dropout module's p and mode, or the float probability of a functional dropout it calls."""
    if "Dropout" in type(module).__name__:
        return {"p": float(getattr(module, "p", 0.0) or 0.0), "functional": False,
                "mode": str(getattr(module, "mode", "upscale_in_train"))}  # torch's is always upscale_in_train
    for attr in FUNCTIONAL_DROPOUT:
        value = getattr(module, attr, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return {"p": float(value), "functional": True, "mode": "upscale_in_train", "attribute": attr}
    return None


@contextlib.contextmanager
def dropout_off(named_modules, functional: list):
    """Every dropout at probability 0 while the block runs, then restored: Dropout modules' p, the
    float probability attention modules pass to a functional dropout (FUNCTIONAL_DROPOUT), and
    the framework's functional dropouts themselves (`functional`: (namespace, name, replacement)).
    Each framework draws its own masks, so train-mode steps are only comparable without them."""
    saved = []
    for _, module in named_modules:
        attrs = ("p",) if "Dropout" in type(module).__name__ else FUNCTIONAL_DROPOUT
        for attr in attrs:
            value = getattr(module, attr, None)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value:
                saved.append((module, attr, value))
                setattr(module, attr, 0.0)
    for namespace, name, replacement in functional:
        saved.append((namespace, name, getattr(namespace, name)))
        setattr(namespace, name, replacement)
    try:
        yield len(saved) - len(functional)
    finally:
        for owner, attr, value in reversed(saved):
            setattr(owner, attr, value)


def no_dropout_p(fn, position: int = 4):
    """fn (an attention kernel: query, key, value, attn_mask, dropout_p, ...) with dropout_p
    forced to 0, whether it is passed by name or by position (torch's own attention does)."""
    @functools.wraps(fn)
    def call(*args, **kwargs):
        if len(args) > position:
            args = (*args[:position], 0.0, *args[position + 1:])
        else:
            kwargs["dropout_p"] = 0.0
        return fn(*args, **kwargs)
    return call


def identity(x, *args, **kwargs):
    return x


class Stepper(abc.ABC):
    """One training step's optimizer side: a framework optimizer + scheduler."""

    scheduler = None  # the framework's own lr scheduler, or None
    # this side's parameter name -> how the optimizer decays it ('L2 0.0001', harness.config.optim_table.
    # decay_label), decayed ones only; None: unknown (a pair's own optimizer of a kind not recognized)
    decay: dict | None = None

    @abc.abstractmethod
    def lr(self) -> float: ...

    @abc.abstractmethod
    def step(self, metric: float | None = None) -> None:
        """Clip, update, advance the scheduler (a plateau schedule reads `metric`, the step's loss)."""

    @abc.abstractmethod
    def advance(self, metric: float | None = None) -> None:
        """Move the schedule one step without training (for the lr check)."""

    @abc.abstractmethod
    def zero_grad(self) -> None: ...

    @abc.abstractmethod
    def state(self) -> dict:
        """The optimizer's and the schedule's state (tensors as they are), to continue from later."""

    @abc.abstractmethod
    def load(self, state: dict, moments: bool = True) -> None:
        """Continue from `state` (numpy arrays where state() had tensors), in this worker's precision;
        without `moments`, only the schedule's place and the settings: each parameter's state afresh."""


class Primitives(abc.ABC):
    framework = ""
    tensor_types: tuple = ()

    # ---------------------------------------------------------------- the framework
    @abc.abstractmethod
    def version(self) -> str: ...
    @abc.abstractmethod
    def device(self) -> str: ...
    @abc.abstractmethod
    def set_threads(self, n: int) -> None: """CPU threads of the framework's kernels from the next one on."""
    @abc.abstractmethod
    def seed_all(self, seed: int) -> None: ...
    @abc.abstractmethod
    def model_type(self) -> type: ...
    @abc.abstractmethod
    def use_precision(self, precision: str) -> None: """Before a model is built: float32 or float64 from now on."""
    @abc.abstractmethod
    def to_device(self, model): """The model on this worker's device, in this worker's precision."""
    @abc.abstractmethod
    def module_table(self, model) -> list: """[{name, type, params, buffers, ids, dropout}] in definition order."""

    # ---------------------------------------------------------------- state
    @abc.abstractmethod
    def state_tensors(self, model) -> dict: """Parameters and persistent buffers by structured name."""
    @abc.abstractmethod
    def load_state(self, model, state: dict) -> None: """Strict: every tensor present, every shape equal."""
    @abc.abstractmethod
    def param_tensors(self, model) -> dict: """Trainable parameters by structured name."""
    @abc.abstractmethod
    def grad_tensors(self, model) -> dict: """Parameters' gradients, where they have one."""
    @abc.abstractmethod
    def clear_grads(self, model) -> None: """Every parameter without a gradient (none kept from an earlier step)."""
    @abc.abstractmethod
    def read_checkpoint(self, path: str) -> dict: """A framework checkpoint file as numpy, never running code."""
    @abc.abstractmethod
    def write_checkpoint(self, model, path: str) -> None: ...

    # ---------------------------------------------------------------- computing
    @abc.abstractmethod
    def set_train(self, model, training: bool) -> None: ...
    @abc.abstractmethod
    def allow_backward_in_eval(self, model) -> None: """Undo eval mode where a framework cannot backprop in it."""
    @abc.abstractmethod
    def data_parallel(self, model): """Joins the process group (env set by the coordinator), wraps the model."""
    @abc.abstractmethod
    def no_grad(self): ...
    @abc.abstractmethod
    def to_tensor(self, array: np.ndarray): ...
    @abc.abstractmethod
    def to_numpy(self, tensor) -> np.ndarray: """May be a view of the tensor's memory (torch on CPU)."""
    @abc.abstractmethod
    def backward(self, loss) -> None: ...
    @abc.abstractmethod
    def builtin_loss(self, kind: str, output, labels): ...
    @abc.abstractmethod
    def make_stepper(self, model, cfg: dict, total_steps: int) -> Stepper: ...
    @abc.abstractmethod
    def argmax(self, output): """Class indices over the last axis."""
    @abc.abstractmethod
    def topk(self, output, k: int): """(N, k) indices over the last axis."""

    # ---------------------------------------------------------------- localization (backends/trace.py)
    @abc.abstractmethod
    def named_modules(self, model) -> list: """[(structured name, module)], the model itself as ''."""
    @abc.abstractmethod
    def hook_forward(self, module, pre, post) -> list: """pre(args, kwargs), post(output); returns removers."""
    @abc.abstractmethod
    def hook_grad(self, tensor, fn) -> None: """fn(grad) once the gradient w.r.t. tensor is known."""
    @abc.abstractmethod
    def dropout_off(self, model): """Context: every dropout of the model and the framework off (see dropout_off)."""
    @abc.abstractmethod
    def dropout_shared(self, model, masks): """Context: dropout masks from `masks` (backends/masks.py)."""
    @abc.abstractmethod
    def rng_state(self): """The framework's random generators' state (on this worker's device too)."""
    @abc.abstractmethod
    def set_rng_state(self, state) -> None: ...

    # ---------------------------------------------------------------- the pair's own data (backends/pairdata.py)
    @abc.abstractmethod
    def default_collate(self): """The framework's default collate_fn: a list of items -> one batch."""

    # ---------------------------------------------------------------- written once over the primitives
    @contextlib.contextmanager
    def preserved_rng(self):
        """The framework's random generators restored on exit (a set-up forward draws nothing)."""
        state = self.rng_state()
        try:
            yield
        finally:
            self.set_rng_state(state)

    def plain(self, value):
        """A nested state (an optimizer's) as numpy arrays and plain containers: what a kept file holds."""
        if isinstance(value, self.tensor_types):
            return np.array(self.to_numpy(value))
        if isinstance(value, dict):
            return {k: self.plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.plain(v) for v in value]
        return value

    def snapshot(self, tensors: dict) -> dict:
        """Numpy copies that later training cannot change."""
        return {k: np.array(self.to_numpy(t)) for k, t in tensors.items()}

    def export(self, tensors: dict) -> dict:
        """For a reply: each tensor becomes numpy only when it is sent, and is written straight
        from the tensor's memory where the framework allows, so no second copy of a model is made."""
        return {k: Deferred(functools.partial(self.to_numpy, t)) for k, t in tensors.items()}

    def stash(self, tensors: dict, *, worker_owned: bool) -> dict:
        """Copies in the run's shared memory, written straight from each tensor and read back
        memory-mapped: a model-sized copy that costs the process no resident memory while kept
        (the initial weights), or that the coordinator reads without this worker holding it."""
        return self.shared({k: self.to_numpy(t) for k, t in tensors.items()}, worker_owned=worker_owned)

    def shared(self, arrays: dict, *, worker_owned: bool = False) -> dict:
        """Numpy arrays into the run's shared memory (stash, for arrays already made)."""
        return {k: write_shared(a, self.options["shm_dir"], worker_owned=worker_owned) for k, a in arrays.items()}

    def keep(self, tensor):
        """A copy of a traced tensor that later computation cannot change: in shared memory unless
        tiny, so a traced step's activations pile up neither here nor in the coordinator (a
        hidden state of 8 x 32 x 768 floats is under the pipe's 1 MiB, hundreds of them a step)."""
        arr = self.to_numpy(tensor)
        return write_shared(arr, self.options["shm_dir"]) if arr.nbytes >= TRACE_SHM_MIN_BYTES else np.array(arr)

    precision = "float32"

    def tensors(self, batch: dict) -> dict:
        """Batch arrays as tensors; floating inputs in the worker's precision (the coordinator
        makes float32 data, float64 arbitration computes on the same values upcast). Text (a
        pipeline's raw sentences) stays a numpy array: no framework has string tensors."""
        wide = self.precision == "float64"
        return {k: v if v.dtype.kind in "US" else self.to_tensor(v.astype(np.float64) if wide and v.dtype.kind == "f" else v)
                for k, v in batch.items()}

    def flatten(self, value, prefix: str = "out", source: str = "the model") -> dict:
        """Outputs of any nesting -> {"out": ..} / {"out.0": ..} / {"out.logits": ..}. Only what
        can cross to the coordinator and be compared (tensors, numbers, numeric arrays) is taken:
        anything else is named here, with its key and the function that returned it (`source`)."""
        if isinstance(value, self.tensor_types):
            return {prefix: self.to_numpy(value)}
        if isinstance(value, dict) or hasattr(value, "items"):
            items = value.items()
        elif isinstance(value, (list, tuple)):
            items = enumerate(value)
        elif value is None:
            return {}
        elif isinstance(value, (int, float, np.ndarray, np.generic)) and not np.asarray(value).dtype.hasobject:
            return {prefix: np.asarray(value)}
        else:
            raise TypeError(f"output '{prefix}' of {source} is {_what(value)}, which cannot cross to the coordinator "
                            "(return tensors, numbers or numeric numpy arrays)")
        out = {}
        for k, v in items:
            out.update(self.flatten(v, f"{prefix}.{k}", source))
        return out

    def tensor_leaves(self, value, prefix: str):
        """(flattened name, tensor) of every tensor in a nested output, in flatten's order."""
        if isinstance(value, self.tensor_types):
            yield prefix, value
        elif isinstance(value, dict) or hasattr(value, "items"):
            for k, v in value.items():
                yield from self.tensor_leaves(v, f"{prefix}.{k}")
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                yield from self.tensor_leaves(v, f"{prefix}.{i}")

    def first_tensor(self, value, key: str | None):
        """The output tensor the loss or metric reads: `key` ([loss]/[metric] output), or the first."""
        if key is None:
            if isinstance(value, self.tensor_types):
                return value
            leaves = list(self.tensor_leaves(value, "out"))
            if not leaves:
                raise ValueError("the model output holds no tensor")
            return leaves[0][1]
        for name, t in self.tensor_leaves(value, "out"):
            if name == key:
                return t
        raise KeyError(f"output key '{key}' (from [loss]/[metric] output) not in the model output")

    def scalar(self, tensor) -> np.ndarray:
        arr = self.to_numpy(tensor)
        if arr.size != 1:
            raise ValueError(f"the loss must be a scalar, got shape {arr.shape}")
        return arr.reshape(())


def _what(value) -> str:
    """'a _thread.lock', 'an object array holding _thread.lock, int' ... for messages."""
    if isinstance(value, np.ndarray):
        held = sorted({f"{type(v).__module__}.{type(v).__qualname__}".removeprefix("builtins.") for v in value.flat})
        return f"an object array of shape {value.shape} holding {', '.join(held[:3]) or 'nothing'}"
    kind = f"{type(value).__module__}.{type(value).__qualname__}".removeprefix("builtins.")
    return f"a {kind}"
