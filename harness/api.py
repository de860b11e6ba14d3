"""The Python API: what `reprod-harness run` does, callable from a user's own code and tests.

    from harness import check
    report = check("pair.toml", checks=["forward", "loss"], out="artifacts/my-model")
    assert report.aligned, report.text()

It returns the RunReport (harness/report/runreport.py: `aligned`, `checks`, `first_divergence`, `to_json()`,
`text()`) and raises UsageError for a bad config, pair or argument (the CLI's exit 2) and
WorkerError when a worker raises, dies or times out (exit 3). Nothing is printed unless a
`progress` callable is given. The pytest plugin (harness/pytest_plugin.py) is built on it."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Iterable

from harness.errors import UsageError


def load(pair_toml: str | Path | None = None, *, zoo: str | None = None, checks: Iterable[str] | str | None = None,
         iters: int | None = None):
    """The run's config: a TOML file or a zoo pair, with the checks and backward steps chosen."""
    from harness.config import parse

    if (pair_toml is None) == (zoo is None):
        raise UsageError("give exactly one of a pair TOML or zoo=NAME (see `reprod-harness zoo`)")
    cfg = parse.load_zoo(zoo) if zoo else parse.load(pair_toml)
    if checks:
        listed = checks if isinstance(checks, str) else list(checks)
        cfg = cfg.replace(checks=parse.parse_checks(listed, lambda m: UsageError(f"checks: {m}")), checks_given=True)
    if iters is not None:
        if iters < 1:
            raise UsageError(f"iters: must be >= 1, got {iters}")
        cfg = cfg.replace(train=dataclasses.replace(cfg.train, iters=iters))
    return cfg


def interpreters(cfg, *, torch_python: str | Path | None = None, paddle_python: str | Path | None = None) -> dict:
    """Each worker's interpreter, given and existing: the argument's, else [workers]'s (cfg may be
    None), else none (the coordinator's own)."""
    from harness.config.parse import key_where
    from harness.workers.interpreters import Interpreter

    chosen = {}
    for side, given in (("torch", torch_python), ("paddle", paddle_python)):
        if given is not None:
            chosen[side] = Interpreter.given(given, f"--{side}-python")
        elif cfg is not None and (path := getattr(cfg.workers, f"{side}_python")) is not None:
            chosen[side] = Interpreter.given(path, key_where(cfg, f"workers.{side}_python"))
    return chosen


def options(cfg, *, out: str | Path | None = None, timeout: float = 900.0, startup_timeout: float = 900.0,
            device: str = "auto",
            benchmark: Path | None = None, weights: Path | None = None, locate: bool = False, layout=None,
            dp_equivalence: bool = False, save_tensors: bool = False, arbitrate: bool = True,
            threads: int | None = None, torch_python: str | Path | None = None,
            paddle_python: str | Path | None = None, early_stop: bool = True, resume: bool = False):
    """RunOptions, every argument checked before any worker starts (a usage error costs nothing)."""
    from harness.mapping import checkpoints
    from harness.session import RunOptions

    if device not in ("auto", "cpu", "gpu"):
        raise UsageError(f"device: expected auto, cpu or gpu, got '{device}'")
    if benchmark is not None:
        benchmark = Path(benchmark)
        if not benchmark.is_file():
            raise UsageError(f"--benchmark: {benchmark}: file not found")
        if "train" not in cfg.checks:
            raise UsageError("--benchmark compares the train check's final metric: add train to the checks")
        from harness.report.compare import load_side

        load_side(benchmark)  # a file that is unsafe or no reprod_log file is refused before any worker starts
    if threads is not None and threads < 1:
        raise UsageError(f"--threads: expected 1 or more, got {threads}")
    if weights is not None:
        weights = Path(weights)
        checkpoints.verify(weights)  # missing, unknown or unsafe: a usage error before any worker starts
    if dp_equivalence and (layout is None or layout.nprocs < 2 or layout.nnodes > 1):
        raise UsageError("--dp-equivalence compares N ranks with 1 on one machine: give --nprocs 2 or more, no --nnodes")
    chosen = interpreters(cfg, torch_python=torch_python, paddle_python=paddle_python)
    out_dir = Path(out) if out is not None else Path("artifacts") / cfg.name
    if resume:
        _resumable(cfg, out_dir)
    return RunOptions(out_dir=out_dir.resolve(), timeout=timeout, startup_timeout=startup_timeout, device=device,
                      benchmark=benchmark,
                      weights=weights, locate=locate, layout=layout, dp_equivalence=dp_equivalence,
                      save_tensors=save_tensors, arbitrate=arbitrate, threads=threads, interpreters=chosen,
                      early_stop=early_stop, resume=resume)


def _resumable(cfg, out_dir: Path) -> None:
    """--resume needs a training run, and an interrupted one kept beside --out: else exit 2 now."""
    from harness.trainrun.keep import folder_of

    if not ("train" in cfg.checks and cfg.train.is_run):
        raise UsageError("--resume continues a training run: the train check with [train] epochs or steps")
    kept = folder_of(out_dir.resolve())
    if not (kept / "run.json").is_file():
        raise UsageError(f"--resume: {kept} holds no interrupted training run (no run.json): run without --resume "
                         "to start it")


def check(pair_toml: str | Path | None = None, *, zoo: str | None = None, checks: Iterable[str] | str | None = None,
          out: str | Path | None = None, iters: int | None = None, nprocs: int | None = None,
          timeout: float = 900.0, device: str = "auto", weights: str | Path | None = None, locate: bool = False,
          benchmark: str | Path | None = None, dp_equivalence: bool = False, save_tensors: bool = False,
          arbitrate: bool = True, torch_python: str | Path | None = None, paddle_python: str | Path | None = None,
          early_stop: bool = True, resume: bool = False, progress: Callable[[str], None] | None = None):
    """Run the checks of a pair (a TOML path, or zoo=NAME) and write the artifacts to `out`
    (default artifacts/<name>); returns the RunReport, aligned or not. torch_python / paddle_python:
    each worker's interpreter when the frameworks live in separate environments (default: [workers]
    of the TOML, else this interpreter). early_stop, resume: a training run's ([train] epochs or
    steps) stop when its curves part, and continuing an interrupted one."""
    from harness import coordinator
    from harness.workers.ranks import Layout

    cfg = load(pair_toml, zoo=zoo, checks=checks, iters=iters)
    if nprocs is not None and nprocs < 1:
        raise UsageError(f"nprocs: must be >= 1, got {nprocs}")
    layout = Layout(nprocs=nprocs or cfg.distributed.nprocs, backend=cfg.distributed.backend)
    opts = options(cfg, out=out, timeout=timeout, device=device, weights=weights, locate=locate, layout=layout,
                   benchmark=benchmark, dp_equivalence=dp_equivalence, save_tensors=save_tensors, arbitrate=arbitrate,
                   torch_python=torch_python, paddle_python=paddle_python, early_stop=early_stop, resume=resume)
    return coordinator.run(cfg, opts, progress or (lambda message: None))
