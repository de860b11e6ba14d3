"""What each framework must supply: abstract primitives (tensors, modules, state, loss, optimizer,
hooks), and the generic helpers written once over them. A backend that forgets a primitive fails
at start-up, naming it (Python refuses to instantiate the class), never with a silent None."""

from __future__ import annotations

import abc

import numpy as np


class Stepper(abc.ABC):
    """One training step's optimizer side: a framework optimizer + scheduler."""

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


class Primitives(abc.ABC):
    framework = ""
    tensor_types: tuple = ()

    # ---------------------------------------------------------------- the framework
    @abc.abstractmethod
    def version(self) -> str: ...
    @abc.abstractmethod
    def device(self) -> str: ...
    @abc.abstractmethod
    def seed_all(self, seed: int) -> None: ...
    @abc.abstractmethod
    def model_type(self) -> type: ...
    @abc.abstractmethod
    def to_device(self, model): """The model on this worker's device."""
    @abc.abstractmethod
    def module_table(self, model) -> list: """[{name, type, params, buffers, ids, dropout}] in definition order."""

    # ---------------------------------------------------------------- state
    @abc.abstractmethod
    def state(self, model) -> dict: ...
    @abc.abstractmethod
    def load_state(self, model, state: dict) -> None: """Strict: every tensor present, every shape equal."""
    @abc.abstractmethod
    def params(self, model) -> dict: """Trainable parameters by structured name."""
    @abc.abstractmethod
    def grads(self, model) -> dict: ...
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
    def to_numpy(self, tensor) -> np.ndarray: ...
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

    # ---------------------------------------------------------------- written once over the primitives
    def tensors(self, batch: dict) -> dict:
        return {k: self.to_tensor(v) for k, v in batch.items()}

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
