"""The run configuration as values: one frozen dataclass per TOML section (docs/design.md section 2),
with every default a user gets when a key is absent."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path

from harness.verdict.tolerance import ToleranceConfig

CHECKS = ("data", "init", "forward", "metric", "loss", "lr", "backward", "train")  # always run in this order
# what runs when the TOML and the command line name no checks: data only where the pair defines its
# own (data_torch/data_paddle); init only when asked for
DEFAULT_CHECKS = tuple(c for c in CHECKS if c != "init")
DATA_SOURCES = ("make_batch", "torch", "paddle")
SPLITS = ("train", "eval")


@dataclass(frozen=True)
class DataConfig:
    inputs: list | None = None  # None: every batch key that is not a label, in make_batch order
    labels: list = field(default_factory=lambda: ["label"])
    batch_size: int = 8
    seed: int = 0
    eval_batches: int = 4
    # the pair's own data (data_torch/data_paddle): which side's batches every check runs on
    source: str | None = None  # make_batch | torch | paddle; None: make_batch when the pair has one, else torch
    items: int = 8  # items the data check compares at seeded indices (the first and the last among them)
    batches: int = 5  # batches of each loader the data check compares, in order
    fields: list = field(default_factory=list)  # names of positional fields (a tuple batch), in order


@dataclass(frozen=True)
class LossConfig:
    kind: str = "cross_entropy"
    output: str | None = None  # flattened output key fed to the loss; None: the first output


@dataclass(frozen=True)
class MetricConfig:
    kind: str = "accuracy"
    output: str | None = None
    k: int = 5  # for top-k accuracy


@dataclass(frozen=True)
class OptimizerConfig:
    name: str = "sgd"
    lr: float = 1e-3
    weight_decay: float = 0.0
    decay: str = "auto"  # auto (adamw: decoupled, others: coupled) | coupled | decoupled | l1
    no_decay: list = field(default_factory=list)
    grad_clip: float = 0.0
    clip_value: float = 0.0
    momentum: float = 0.9
    nesterov: bool = False
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8


@dataclass(frozen=True)
class SchedulerConfig:
    name: str = "constant"
    warmup_steps: int = 0
    total_steps: int | None = None  # None: [train] iters
    step_size: int = 1
    milestones: list = field(default_factory=list)
    gamma: float = 0.1
    power: float = 1.0
    end_lr: float = 0.0
    num_cycles: float = 0.5
    max_lr: float | None = None
    pct_start: float = 0.3
    div_factor: float = 25.0
    final_div_factor: float = 1e4
    patience: int = 2  # plateau: steps without improvement before the lr drops by gamma
    threshold: float = 1e-4
    cooldown: int = 0
    min_lr: float = 0.0


@dataclass(frozen=True)
class TrainConfig:
    iters: int = 5
    train_iters: int = 50
    mode: str = "eval"  # the backward check runs in eval mode so dropout cannot differ
    # the training run (the train check on the pair's data, harness/trainrun/): either sets its length
    epochs: int | None = None
    steps: int | None = None
    eval_every: int | None = None  # steps between evaluations; None: once per epoch
    patience: int = 2  # evaluations in a row outside the band that stop the run

    @property
    def is_run(self) -> bool:
        """The train check is a training run (epochs or steps given), not train_iters steps."""
        return self.epochs is not None or self.steps is not None


@dataclass(frozen=True)
class DistributedConfig:
    nprocs: int = 1
    backend: str = "auto"


@dataclass(frozen=True)
class WorkersConfig:
    """Each worker's Python interpreter, relative to the TOML (--torch-python / --paddle-python win);
    None: the coordinator's own."""

    torch_python: str | None = None
    paddle_python: str | None = None


@dataclass(frozen=True)
class RunConfig:
    name: str
    pair: Path
    source: Path  # the TOML file (or zoo entry) this came from
    data: DataConfig = DataConfig()
    loss: LossConfig = LossConfig()
    metric: MetricConfig = MetricConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    lr_scheduler: SchedulerConfig = SchedulerConfig()
    train: TrainConfig = TrainConfig()
    tolerance: ToleranceConfig = ToleranceConfig()
    distributed: DistributedConfig = DistributedConfig()
    workers: WorkersConfig = WorkersConfig()
    checks: tuple = DEFAULT_CHECKS
    checks_given: bool = False  # named by the TOML or the caller: a check the pair cannot run is an error
    mapping: dict = field(default_factory=dict)  # [mapping]: torch module prefix -> paddle module prefix

    @property
    def label_readers(self) -> list:
        """The checks of this run that read [data] labels: those computing a built-in loss or metric
        (a pair's own loss_*/metric_* reads the batch as it likes)."""
        builtin_loss = self.loss.kind != "pair"
        builtin_metric = self.metric.kind != "pair"
        return [c for c in self.checks
                if (builtin_loss and c in ("loss", "backward", "train")) or (builtin_metric and c in ("metric", "train"))]

    @property
    def total_steps(self) -> int:
        return self.lr_scheduler.total_steps or self.train.iters

    def to_wire(self) -> dict:
        """Plain data for the workers (they never see this module's classes)."""
        d = dataclasses.asdict(self)
        d["pair"], d["source"] = str(self.pair), str(self.source)
        return d

    def replace(self, **changes) -> RunConfig:
        return dataclasses.replace(self, **changes)


SECTIONS = {
    "data": DataConfig,
    "loss": LossConfig,
    "metric": MetricConfig,
    "optimizer": OptimizerConfig,
    "lr_scheduler": SchedulerConfig,
    "train": TrainConfig,
    "distributed": DistributedConfig,
    "workers": WorkersConfig,
}
TOP_LEVEL = ("name", "pair", "checks", "tolerance", "mapping", *SECTIONS)
MODULE_PATH = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*")
LOSS_KINDS = ("cross_entropy", "mse", "pair")
METRIC_KINDS = ("accuracy", "topk", "f1", "mse", "pair")
CHOICES = {
    ("loss", "kind"): LOSS_KINDS,
    ("metric", "kind"): METRIC_KINDS,
    ("optimizer", "decay"): ("auto", "coupled", "decoupled", "l1"),
    ("train", "mode"): ("eval", "train"),
    ("distributed", "backend"): ("auto", "gloo", "nccl"),
    ("data", "source"): DATA_SOURCES,
}


