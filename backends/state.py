"""The worker's weights: checkpoints read and written, states loaded strictly, and the initial
state every check starts from, kept in shared memory (backends/primitives.py stash) rather than
in the process. A mixin of backends/base.Runner, over the framework primitives."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


class StateOps:
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
