"""Measuring which way a square 2-D weight goes (harness/mapping/layout.py): torch records a
module's input in its forward and the module's output on that input with probe values
(harness.workers.protocol.probe) in its tensors; paddle calls its counterpart on the same input
with the same probe values in each candidate layout. Only the modules asked for are hooked, and
only their first call's input is kept. A mixin of backends/base.Runner, over the framework
primitives; either side can serve either op.
"""

from __future__ import annotations

import numpy as np

from harness.workers.protocol import probe

TENSOR = "__tensor__"  # marks a tensor in a portable input: ("__tensor__", array)
MAX_STRING = 200


class LayoutOps:
    def record_probes(self, batch: dict, modules: dict) -> dict:
        """modules: {module name: [full names of the tensors to probe]}. Per module its first call's
        input in one eval-mode forward of batch and its output there with those tensors holding
        their probe values, or why it could not be recorded."""
        self._restore()
        self.set_train(self.model, False)
        by_name = dict(self.named_modules(self.model))
        inputs: dict = {}
        removers: list = []
        for name in modules:
            removers += self.hook_forward(by_name[name], lambda args, kwargs, name=name: self._first_input(
                inputs, name, args, kwargs, len(modules)), lambda output: None)
        try:  # grad stays on, as for the call order: torch's fused no_grad paths skip submodules
            with self.preserved_rng():
                self.run_forward(self.tensors(batch))
        except _AllRecorded:  # the rest of the forward (an LLM's lm_head, say) is not needed
            pass
        finally:
            for remove in removers:
                remove()
        out = {}
        for name, probed in modules.items():
            record = inputs.get(name, "not called by the forward")
            if isinstance(record, str):
                out[name] = {"error": record}
                continue
            prefix = f"{name}." if name else ""
            shapes = {k: (tuple(t.shape), self.to_numpy(t).dtype) for k, t in self.state_tensors(by_name[name]).items()}
            values = {full[len(prefix):]: probe(full, *shapes[full[len(prefix):]]) for full in probed}
            try:
                out[name] = {"input": record, "output": self._call_with(by_name[name], record, values)}
            except Exception as exc:  # noqa: BLE001 - the plan falls back to its type rule and says why
                out[name] = {"error": _why(exc)}
        return out

    def replay_probes(self, modules: dict) -> dict:
        """modules: {module name: {input, output, candidates}}, each candidate {tensor name within
        the module: (torch tensor name, torch shape, part, transpose)}. Per module the largest
        difference of each candidate's output from torch's, relative to torch's largest value."""
        by_name = dict(self.named_modules(self.model))
        out = {}
        for name, ask in modules.items():
            own = {k: self.to_numpy(t).dtype for k, t in self.state_tensors(by_name[name]).items()}
            errors = []
            for candidate in ask["candidates"]:
                values = {local: _laid_out(probe(tname, tuple(shape), own[local]), part, transpose)
                          for local, (tname, shape, part, transpose) in candidate.items()}
                try:
                    got = self._call_with(by_name[name], ask["input"], values)
                except Exception as exc:  # noqa: BLE001 - a module that cannot take torch's input
                    out[name] = {"error": _why(exc)}
                    break
                if [np.shape(g) for g in got] != [np.shape(w) for w in ask["output"]]:
                    out[name] = {"error": f"its output's tensors are {_shapes(got)}, torch's {_shapes(ask['output'])}"}
                    break
                errors.append(_relative(got, ask["output"]))
            else:
                out[name] = {"errors": errors}
        return out

    def _first_input(self, inputs: dict, name: str, args, kwargs, wanted: int) -> None:
        if name not in inputs:
            try:
                inputs[name] = self._portable((tuple(args), dict(kwargs or {})))
            except TypeError as exc:
                inputs[name] = str(exc)
            if len(inputs) == wanted:
                raise _AllRecorded

    def _call_with(self, module, record, values: dict) -> list:
        """The module's output leaves on the recorded input with `values` in its tensors; its own
        tensors are back in place afterwards."""
        saved = self.snapshot(self.state_tensors(module))
        self.load_state(module, {**saved, **values})
        try:
            with self.no_grad():
                args, kwargs = self._live(record)
                return [np.array(self.to_numpy(t)) for _, t in self.tensor_leaves(module(*args, **kwargs), "out")]
        finally:
            self.load_state(module, saved)

    def _portable(self, value):
        """A call's arguments with every tensor as a numpy copy: what crosses to the other side."""
        if isinstance(value, self.tensor_types):
            return (TENSOR, np.array(self.to_numpy(value)))
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        if isinstance(value, (list, tuple)):
            return type(value)(self._portable(v) for v in value)
        if isinstance(value, dict):
            return {k: self._portable(v) for k, v in value.items()}
        raise TypeError(f"its input holds a {type(value).__module__}.{type(value).__qualname__}")

    def _live(self, value):
        if isinstance(value, tuple) and len(value) == 2 and value[0] == TENSOR:
            return self.tensors({"x": value[1]})["x"]
        if isinstance(value, (list, tuple)):
            return type(value)(self._live(v) for v in value)
        if isinstance(value, dict):
            return {k: self._live(v) for k, v in value.items()}
        return value


class _AllRecorded(Exception):
    """Every module asked for has its input: the forward stops there."""


def _laid_out(value: np.ndarray, part: tuple | None, transpose: bool) -> np.ndarray:
    if part:
        value = np.split(value, part[1], axis=0)[part[0]]
    return np.ascontiguousarray(value.T) if transpose else value


def _shapes(arrays: list) -> str:
    return ", ".join(str(list(np.shape(a))) for a in arrays) or "none"


def _relative(got: list, want: list) -> float:
    scale = max((float(np.max(np.abs(w))) for w in want if np.size(w)), default=0.0) or 1.0
    error = max((float(np.max(np.abs(np.asarray(g, np.float64) - w))) for g, w in zip(got, want) if np.size(w)),
                default=0.0) / scale
    return error if np.isfinite(error) else float("inf")


def _why(exc: Exception) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:MAX_STRING]
