"""Result keys as values. A decision reads a key's fields; only writing formats it as text.

The text forms are the artifact names users and reprod_log know: `out.logits`, `loss_3`,
`rank1:loss_3`, `step_0_constant_lr`, `param:fc.weight`, `grad:fc.weight`, `buffer:bn.running_mean`,
`metric_accuracy`, `benchmark:accuracy`, `sync:paddle:rank1`, `band:eval_loss`, and, for the data-parallel
equivalence check, any of them behind the framework that ran both sides (`torch:loss_0`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Kind(str, Enum):
    VALUE = "value"  # a named array: a model output, the loss check's loss, a metric, a file's key
    LOSS = "loss"  # the loss of one training step (of one rank)
    LR = "lr"  # the learning rate of one step
    PARAM = "param"  # a parameter after the last step, by torch name
    GRAD = "grad"  # a parameter's gradient at the last step
    BUFFER = "buffer"  # a buffer after training (BatchNorm statistics)
    METRIC = "metric"  # the trained model's metric (train check)
    BENCHMARK = "benchmark"  # the paddle metric against a reference file
    SYNC = "sync"  # one rank's parameters against rank 0 of the same framework
    LOCATE = "locate"  # a divergence that only localization saw
    DROPOUT = "dropout"  # a paired dropout's probability and mode
    BAND = "band"  # a training run's curve (train_loss, eval_loss, metric_<name>, lr) against its band


@dataclass(frozen=True)
class Key:
    kind: Kind
    name: str = ""
    step: int | None = None
    rank: int | None = None
    side: str | None = None  # the framework: of a sync key, or of both runs in dp-equivalence

    def __str__(self) -> str:
        k = self.kind
        if k is Kind.SYNC:
            return f"sync:{self.side}:rank{self.rank}"
        if k is Kind.LOSS:
            text = f"loss_{self.step}" if self.rank is None else f"rank{self.rank}:loss_{self.step}"
        elif k is Kind.LR:
            text = f"step_{self.step}_{self.name}_lr"
        elif k is Kind.METRIC:
            text = f"metric_{self.name}"
        elif k is Kind.VALUE:
            text = self.name
        else:
            text = f"{k.value}:{self.name}"
        return text if self.side is None else f"{self.side}:{text}"


def value(name: str) -> Key:
    return Key(Kind.VALUE, name)


def values(arrays: dict) -> dict:
    """Named arrays (a worker's outputs, a file's keys) keyed by value keys."""
    return {value(str(k)): v for k, v in arrays.items()}


def losses(per_step, rank: int | None = None) -> dict:
    return {Key(Kind.LOSS, step=i, rank=rank): v for i, v in enumerate(per_step)}


def named(kind: Kind, arrays: dict) -> dict:
    return {Key(kind, name): v for name, v in arrays.items()}


def texts(arrays: dict) -> dict:
    """Keys formatted for the artifacts (reprod_log files hold text keys)."""
    return {str(k): v for k, v in arrays.items()}
