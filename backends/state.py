"""The worker's weights: checkpoints read and written, states loaded strictly, and the initial
state every check starts from, kept in shared memory (backends/primitives.py stash) rather than
in the process; and the freshly built model's summary for the init check. A mixin of
backends/base.Runner, over the framework primitives."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np


class StateOps:
    def set_reference_names(self, names: dict) -> None:
        """The torch name of each of this side's parameters, from the weight pairing: `[optimizer]
        no_decay` patterns are matched against torch's structured names on both sides."""
        self.reference_names = dict(names)

    def read_state_file(self, path: str) -> dict:
        state = self.read_checkpoint(path)
        if not isinstance(state, dict) or not state:
            raise ValueError(f"{path}: expected a state dict of tensors")
        return state

    def load_into_model(self, state: dict, keep_own: tuple = ()) -> dict:
        """Strict load into this side's model; the new initial state for every check. keep_own
        names tensors the other framework has no counterpart of (BatchNorm's batch counter)."""
        state = dict(state)
        if keep_own:
            own = self.state_tensors(self.model)
            state.update({k: self.to_numpy(own[k]) for k in keep_own if k in own and k not in state})
        self.load_state(self.model, state)
        del state  # the arrays given (memory-mapped) are let go before the copy below is made
        self._keep_initial()
        self._dirty = False
        return {"loaded": len(self._initial)}

    def write_state_file(self, state: dict, path: str, keep_own: tuple = ()) -> dict:
        self.load_into_model(state, keep_own)  # strict: a converted file that does not fit the model is never written
        target = Path(path)
        partial = target.with_name(f".{target.name}.partial-{os.getpid()}{target.suffix}")
        try:  # written beside the target and renamed: a full disk never leaves half a checkpoint
            self.write_checkpoint(self.model, str(partial))
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
        return {"path": path}

    def export_state(self) -> dict:
        """The initial state, as handles on this worker's own copy in shared memory: the other
        worker reads it from there, and nothing is written twice."""
        if self._initial is None or self._dirty:
            self._restore()
            self._keep_initial()
        return dict(self._initial)

    def _keep_initial(self) -> None:
        """The weights every check starts from, kept in shared memory (not in this process)."""
        self._retired += list((self._initial or {}).values())
        self._initial = self.stash(self.state_tensors(self.model), worker_owned=True)
        for handle in self._retired:
            with contextlib.suppress(OSError):
                os.unlink(handle.path)
        self._retired = []

    def import_state(self, state: dict, raw: bool = False) -> dict:
        if raw:  # the pair converts torch's state itself
            state = self.pair.torch_to_paddle(dict(state))
        return self.load_into_model(state)

    def _restore(self) -> None:
        """The initial weights back, and no gradient left over: an optimizer that accumulates
        (steps every second call) must not start a check with an earlier check's gradients."""
        if self._dirty and self._initial is not None:
            self.load_state(self.model, {k: handle.load() for k, handle in self._initial.items()})
        self._dirty = False
        self.clear_grads(self.model)


# values of each tensor kept for the init check's two-sample test (sorted, float64: 128 KiB a tensor)
INIT_SAMPLE = 1 << 14
MOMENT_CHUNK = 1 << 20


def init_summary(runner, seed: int) -> dict:
    """Per tensor of the freshly built model: its moments over every value (mean, std, kurtosis,
    bounds) and a seeded sample of up to INIT_SAMPLE values, sorted, for the init check
    (harness/checks/init.py). Taken before any weight is loaded."""
    rng = np.random.default_rng(seed)
    return {name: summarize(np.asarray(runner.to_numpy(t)), rng) for name, t in runner.state_tensors(runner.model).items()}


def summarize(values: np.ndarray, rng: np.random.Generator) -> dict:
    flat = values.reshape(-1)
    n = int(flat.size)
    if n == 0:
        return {"n": 0, "dtype": values.dtype.name}
    low, high, total = np.inf, -np.inf, 0.0
    for start in range(0, n, MOMENT_CHUNK):
        x = flat[start:start + MOMENT_CHUNK].astype(np.float64)
        low, high, total = min(low, float(x.min())), max(high, float(x.max())), total + float(x.sum())
    mean = total / n
    m2 = m4 = 0.0
    for start in range(0, n, MOMENT_CHUNK):
        d = flat[start:start + MOMENT_CHUNK].astype(np.float64) - mean
        d2 = d * d
        m2, m4 = m2 + float(d2.sum()), m4 + float((d2 * d2).sum())
    var = m2 / n
    picked = flat if n <= INIT_SAMPLE else flat[np.sort(rng.choice(n, INIT_SAMPLE, replace=False))]
    return {"n": n, "dtype": values.dtype.name, "mean": mean, "std": var ** 0.5, "min": low, "max": high,
            "kurtosis": (m4 / n) / (var * var) if var > 0 else 0.0,
            "sample": np.sort(picked.astype(np.float64))}
