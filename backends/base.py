"""The worker protocol: one Runner per framework, the check logic written once, here.

A subclass supplies framework primitives (tensors, modules, state, loss, optimizer); the ops
that the coordinator calls (setup, forward, loss, train, ...) live in this class so the two
sides cannot drift apart. Nothing here imports a framework.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

from harness import pairfile


def count_metric(kind: str, predictions: np.ndarray, labels: np.ndarray, k: int) -> dict:
    """Built-in metrics from each framework's predictions (float64, one value per key)."""
    if kind == "mse":
        return {"mse": np.float64(np.mean((predictions - labels.reshape(predictions.shape).astype(np.float64)) ** 2))}
    if predictions.shape[0] != labels.shape[0]:
        raise ValueError(f"{predictions.shape[0]} predictions for {labels.shape[0]} labels: the metric needs "
                         "one prediction per label (set [metric] output, or use kind = \"pair\")")
    if kind == "topk":
        return {f"top{k}_accuracy": np.float64(np.mean(np.any(predictions == labels[:, None], axis=1)))}
    if kind == "accuracy":
        return {"accuracy": np.float64(np.mean(predictions == labels))}
    if kind == "f1":
        classes = np.union1d(predictions, labels)
        scores = []
        for c in classes:
            tp = np.sum((predictions == c) & (labels == c))
            fp = np.sum((predictions == c) & (labels != c))
            fn = np.sum((predictions != c) & (labels == c))
            scores.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
        return {"f1_macro": np.float64(np.mean(scores))}
    raise ValueError(f"unknown metric kind '{kind}'")


class Stepper:
    """One training step's optimizer side: subclasses wrap a framework optimizer + scheduler."""

    def lr(self) -> float:
        raise NotImplementedError

    def step(self, metric: float | None = None) -> None:
        """Clip, update, advance the scheduler (a plateau schedule reads `metric`, the step's loss)."""
        raise NotImplementedError

    def advance(self, metric: float | None = None) -> None:
        """Move the schedule one step without training (for the lr check)."""
        raise NotImplementedError

    def zero_grad(self) -> None:
        raise NotImplementedError


class Runner:
    framework = ""
    tensor_types: tuple = ()

    def __init__(self, options: dict):
        self.options = options
        self.cfg: dict = {}
        self.pair = None
        self.model = None
        self._initial: dict | None = None
        self._dirty = False  # weights moved since the initial state was taken
        self._parallel = None  # the DataParallel wrapper of a rank, made on first use
        self._forward_model = None  # the wrapper while a data-parallel step runs

    # ---------------------------------------------------------------- dispatch
    def handle(self, op: str, kwargs: dict):
        fn = getattr(self, f"op_{op}", None)
        if fn is None:
            raise ValueError(f"unknown op '{op}'")
        if op not in ("setup", "ping") and self.model is None:
            raise RuntimeError(f"'{op}' before 'setup'")
        return fn(**kwargs)

    # ---------------------------------------------------------------- framework primitives
    def version(self) -> str: ...
    def device(self) -> str: ...
    def seed_all(self, seed: int) -> None: ...
    def model_type(self): ...
    def module_table(self, model) -> list: ...
    def state(self, model) -> dict: ...
    def load_state(self, model, state: dict) -> None: ...
    def set_train(self, model, training: bool) -> None: ...
    def data_parallel(self, model): ...  # joins the process group (env set by the coordinator), wraps
    def allow_backward_in_eval(self, model) -> None: """Undo eval mode where a framework cannot backprop in it."""
    def no_grad(self): return contextlib.nullcontext()
    def to_tensor(self, array: np.ndarray): ...
    def to_numpy(self, tensor) -> np.ndarray: ...
    def backward(self, loss) -> None: ...
    def grads(self, model) -> dict: ...
    def params(self, model) -> dict: ...
    def builtin_loss(self, kind: str, output, labels): ...
    def builtin_metric(self, kind: str, output, labels, k: int) -> dict: ...
    def make_stepper(self, model, cfg: dict, total_steps: int) -> Stepper: ...
    def argmax(self, output): ...  # class indices over the last axis
    def topk(self, output, k: int): ...  # (N, k) indices over the last axis
    # for localization (backends/trace.py)
    def named_modules(self, model) -> list: ...  # [(structured name, module)], the model itself as ""
    def hook_forward(self, module, pre, post) -> list: ...  # pre(args, kwargs), post(output); returns removers
    def hook_grad(self, tensor, fn) -> None: ...  # fn(grad) once the gradient w.r.t. tensor is known

    # ---------------------------------------------------------------- helpers
    def _pair_fn(self, stem: str):
        return getattr(self.pair, f"{stem}_{self.framework}", None)

    def tensors(self, batch: dict) -> dict:
        return {k: self.to_tensor(v) for k, v in batch.items()}

    def flatten(self, value, prefix: str = "out") -> dict:
        """Outputs of any nesting -> {"out": ..} / {"out.0": ..} / {"out.logits": ..}."""
        if isinstance(value, self.tensor_types):
            return {prefix: self.to_numpy(value)}
        if isinstance(value, dict) or hasattr(value, "items"):
            items = value.items()
        elif isinstance(value, (list, tuple)):
            items = enumerate(value)
        elif value is None:
            return {}
        elif isinstance(value, (int, float, np.ndarray, np.generic)):
            return {prefix: np.asarray(value)}
        else:
            raise TypeError(f"cannot flatten model output of type {type(value).__name__} at '{prefix}'")
        out = {}
        for k, v in items:
            out.update(self.flatten(v, f"{prefix}.{k}"))
        return out

    def _first_tensor(self, value, key: str | None):
        if key is None:
            if isinstance(value, self.tensor_types):
                return value
            flat_names = list(self._tensor_leaves(value, "out"))
            if not flat_names:
                raise ValueError("the model output holds no tensor")
            return flat_names[0][1]
        for name, t in self._tensor_leaves(value, "out"):
            if name == key:
                return t
        raise KeyError(f"output key '{key}' (from [loss]/[metric] output) not in the model output")

    def _tensor_leaves(self, value, prefix):
        if isinstance(value, self.tensor_types):
            yield prefix, value
        elif isinstance(value, dict) or hasattr(value, "items"):
            for k, v in value.items():
                yield from self._tensor_leaves(v, f"{prefix}.{k}")
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                yield from self._tensor_leaves(v, f"{prefix}.{i}")

    def run_forward(self, batch: dict):
        model = self._forward_model or self.model
        custom = self._pair_fn("forward")
        if custom is not None:
            return custom(model, batch)
        inputs = self.cfg["data"]["inputs"]
        if inputs is None:
            labels = set(self.cfg["data"]["labels"])
            inputs = [k for k in batch if k not in labels]
        return model(*[batch[k] for k in inputs])

    def run_loss(self, output, batch: dict):
        kind = self.cfg["loss"]["kind"]
        if kind == "pair":
            fn = self._pair_fn("loss")
            if fn is None:
                raise ValueError(f"[loss] kind = \"pair\" but the pair module defines no loss_{self.framework}")
            return fn(output, batch)
        labels = batch[self.cfg["data"]["labels"][0]]
        return self.builtin_loss(kind, self._first_tensor(output, self.cfg["loss"]["output"]), labels)

    def scalar(self, tensor) -> np.ndarray:
        arr = self.to_numpy(tensor)
        if arr.size != 1:
            raise ValueError(f"the loss must be a scalar, got shape {arr.shape}")
        return arr.reshape(())

    # ---------------------------------------------------------------- ops
    def op_ping(self, payload=None):
        """Transport check: describes what arrived."""
        return None if payload is None else {"shape": list(np.shape(payload)), "sum": float(np.sum(payload))}

    def op_setup(self, cfg: dict) -> dict:
        self.cfg = cfg
        path = Path(cfg["pair"])
        self.pair = pairfile.load(path, keep=self.framework, where=f"{self.framework} worker")
        build = self._pair_fn("build")
        if build is None:
            raise ValueError(f"{path} defines no build_{self.framework}")
        self.seed_all(cfg["data"]["seed"])
        self.model = build()
        self._parallel = None  # a wrapper of the previous model would train that one
        expected = self.model_type()
        if not isinstance(self.model, expected):
            raise TypeError(
                f"build_{self.framework}() returned {type(self.model).__module__}.{type(self.model).__name__}, "
                f"expected a {expected.__module__}.{expected.__name__}"
            )
        return {
            "framework": self.framework,
            "version": self.version(),
            "device": self.device(),
            "modules": self.module_table(self.model),
            "custom_mapping": callable(getattr(self.pair, "torch_to_paddle", None)),
            "custom_optimizer": self._pair_fn("optimizer") is not None,
        }

    def read_checkpoint(self, path: str) -> dict: ...  # numpy state of a framework checkpoint file
    def write_checkpoint(self, model, path: str) -> None: ...

    def op_read_checkpoint(self, path: str) -> dict:
        state = self.read_checkpoint(path)
        if not isinstance(state, dict) or not state:
            raise ValueError(f"{path}: expected a state dict of tensors")
        return state

    def op_load_state(self, state: dict, keep_own: tuple = ()) -> dict:
        """Strict load into this side's model; the new initial state for every check. keep_own
        names tensors the other framework has no counterpart of (BatchNorm's batch counter)."""
        state = dict(state)
        if keep_own:
            own = self.state(self.model)
            state.update({k: own[k] for k in keep_own if k in own and k not in state})
        self.load_state(self.model, state)
        self._initial = self.state(self.model)
        self._dirty = False
        return {"loaded": len(state)}

    def op_write_checkpoint(self, state: dict, path: str, keep_own: tuple = ()) -> dict:
        self.op_load_state(state, keep_own)  # strict: a converted file that does not fit the model is never written
        self.write_checkpoint(self.model, path)
        return {"path": path}

    def op_export_state(self) -> dict:
        self._initial = self.state(self.model)
        return self._initial

    def op_import_state(self, state: dict, raw: bool = False) -> dict:
        if raw:  # the pair converts torch's state itself
            state = self.pair.torch_to_paddle(dict(state))
        return self.op_load_state(state)

    def _restore(self) -> None:
        if self._dirty and self._initial is not None:
            self.load_state(self.model, self._initial)
        self._dirty = False

    def op_forward(self, batch: dict) -> dict:
        self._restore()
        self.set_train(self.model, False)
        with self.no_grad():
            out = self.flatten(self.run_forward(self.tensors(batch)))
        if not out:
            raise ValueError("the model output holds no tensor")
        return out

    def op_loss(self, batch: dict) -> dict:
        self._restore()
        self.set_train(self.model, False)
        t = self.tensors(batch)
        with self.no_grad():
            return {"loss": self.scalar(self.run_loss(self.run_forward(t), t))}

    def _config(self, overrides: dict | None) -> dict:
        """The run config with some sections replaced (the optimizer matrix reuses one session)."""
        cfg = dict(self.cfg)
        for section, values in (overrides or {}).items():
            cfg[section] = {**cfg[section], **values}
        return cfg

    def op_lr_schedule(self, total_steps: int, overrides: dict | None = None, metrics: list | None = None) -> dict:
        """The lr of each of total_steps steps, read from the framework's own scheduler; metrics
        drive a plateau schedule (the same sequence on both sides)."""
        self._restore()
        stepper = self.make_stepper(self.model, self._config(overrides), total_steps)
        lrs = []
        for i in range(total_steps):
            lrs.append(stepper.lr())
            stepper.advance(metrics[i] if metrics else None)
        return {"lr": np.asarray(lrs, dtype=np.float64)}

    def op_train(self, batches: list, mode: str, total_steps: int, overrides: dict | None = None,
                 eval_batches: list | None = None, parallel: bool = False) -> dict:
        """Steps from the initial weights; per-step loss and lr, final params and last grads, and
        with eval_batches the metric of the trained model. parallel: this process is one rank of
        a DataParallel group and batches are its shards (the framework averages the gradients)."""
        if parallel and self._parallel is None:
            self._parallel = self.data_parallel(self.model)
        self._forward_model = self._parallel if parallel else None
        try:
            return self._train(batches, mode, total_steps, overrides, eval_batches)
        finally:
            self._forward_model = None

    def _train(self, batches, mode, total_steps, overrides, eval_batches) -> dict:
        self._restore()
        self._dirty = True
        self.set_train(self.model, mode == "train")
        if mode != "train":
            self.allow_backward_in_eval(self.model)
        stepper = self.make_stepper(self.model, self._config(overrides), total_steps)
        losses, lrs, grads = [], [], {}
        for i, batch in enumerate(batches):
            t = self.tensors(batch)
            loss = self.run_loss(self.run_forward(t), t)
            losses.append(self.scalar(loss))
            lrs.append(stepper.lr())
            self.backward(loss)
            if i == len(batches) - 1:
                grads = self.grads(self.model)
            stepper.step(float(losses[-1]))
            stepper.zero_grad()
        result = {
            "loss": np.stack(losses) if losses else np.zeros(0, np.float32),
            "lr": np.asarray(lrs, dtype=np.float64),
        }
        if eval_batches is None:
            result.update(params=self.params(self.model), grads=grads)
        else:
            trainable = set(self.params(self.model))
            result["buffers"] = {k: v for k, v in self.state(self.model).items() if k not in trainable}
            result["metric"] = self._evaluate(eval_batches)
        return result

    def op_trace_begin(self, mode: str, total_steps: int, overrides: dict | None = None,
                       eval_modules: tuple = ()) -> dict:
        """Start a hooked run from the initial weights (harness/locate.py drives it step by step)."""
        from backends.trace import Tracer

        self._restore()
        self._dirty = True
        self._tracer = Tracer(self, mode, total_steps, self._config(overrides), eval_modules)
        return {"state": self.state(self.model), "params": self.params(self.model)}

    def op_trace_step(self, batch: dict, backward: bool = False, update: bool = False, with_loss: bool = True,
                      sync: dict | None = None, raw: bool = False) -> dict:
        """One hooked step; sync first loads the other side's state (so each step starts equal)."""
        if sync is not None:
            self.load_state(self.model, self.pair.torch_to_paddle(dict(sync)) if raw else dict(sync))
        return self._tracer.step(batch, backward, update, with_loss)

    def op_metric(self, batches: list, overrides: dict | None = None) -> dict:
        self._restore()
        return self._evaluate(batches, self._config(overrides)["metric"])

    def _evaluate(self, batches: list, metric: dict | None = None) -> dict:
        """The [metric] over all batches at once (macro F1 over every prediction, not a mean of
        per-batch F1s); the framework computes outputs, argmax and top-k, numpy only counts."""
        self.set_train(self.model, False)
        metric = metric or self.cfg["metric"]
        kind = metric["kind"]
        with self.no_grad():
            if kind == "pair":
                fn = self._pair_fn("metric")
                if fn is None:
                    raise ValueError(f"[metric] kind = \"pair\" but the pair module defines no metric_{self.framework}")
                per_batch = []
                for batch in batches:
                    t = self.tensors(batch)
                    per_batch.append({k: float(v) for k, v in fn(self.run_forward(t), t).items()})
                return {k: np.float64(np.mean([m[k] for m in per_batch])) for k in per_batch[0]}
            views, labels = [], []
            for batch in batches:
                t = self.tensors(batch)
                out = self._first_tensor(self.run_forward(t), metric["output"])
                if kind == "mse":
                    views.append(self.to_numpy(out).astype(np.float64))
                elif kind == "topk":
                    views.append(self.to_numpy(self.topk(out, metric["k"])))
                else:
                    views.append(self.to_numpy(self.argmax(out)))
                labels.append(np.asarray(batch[self.cfg["data"]["labels"][0]]))
        if not views:
            raise ValueError("no evaluation batches")
        return count_metric(kind, np.concatenate([v.reshape(len(v), -1) if kind == "topk" else v.reshape(-1) for v in views]),
                            np.concatenate([lab.reshape(-1) for lab in labels]), metric["k"])
