"""The command line. Thin commands; every domain error becomes an exit code in `guarded`."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import signal
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from harness import __version__
from harness.config import parse
from harness.errors import HarnessError, UsageError, WorkerError
from harness.report.progress import Progress

app = typer.Typer(
    name="reprod-harness",
    help="Prove a PaddlePaddle port of a PyTorch model behaves the same, and say where it does not.\n\n"
    "\b\nExamples:\n  reprod-harness demo\n  reprod-harness init my_port && reprod-harness run my_port/pair.toml\n"
    "  reprod-harness run --zoo cnn --out /tmp/cnn\n  reprod-harness report /tmp/cnn --html",
    no_args_is_help=True,
    add_completion=True,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
out = Console()
err = Console(stderr=True, soft_wrap=True)  # an error stays one line, however long

EXIT_ALIGNED, EXIT_MISALIGNED = 0, 1


def guarded(fn):
    """The one place where domain exceptions become messages and exit codes."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except WorkerError as exc:
            if exc.remote_traceback:
                err.print(exc.remote_traceback.rstrip(), markup=False, highlight=False)
            err.print(f"[bold red]error[/]: {escape(str(exc))}", highlight=False)
            raise typer.Exit(exc.exit_code) from None
        except UsageError as exc:
            if exc.detail:
                err.print(exc.detail.rstrip(), markup=False, highlight=False)
            err.print(f"[bold red]error[/]: {escape(str(exc))}", highlight=False)
            raise typer.Exit(exc.exit_code) from None
        except HarnessError as exc:
            err.print(f"[bold red]error[/]: {escape(str(exc))}", highlight=False)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except Exception as exc:  # a bug of ours: say so in one line, traceback on request
            if os.environ.get("REPROD_DEBUG"):
                err.print_exception()
            err.print(
                f"[bold red]internal error[/]: {type(exc).__name__}: {escape(str(exc))} "
                "(set REPROD_DEBUG=1 for the traceback, and please report it)",
                highlight=False,
            )
            raise typer.Exit(3) from None

    return wrapper


def _version(value: bool):
    if value:
        out.print(f"reprod-harness {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
):
    pass


def _execute(cfg, *, out_dir: Optional[Path], timeout: float, startup_timeout: float = 900.0, device: str = "auto",
             as_json: bool = False,
             quiet: bool = False, verbose: bool = False, benchmark: Optional[Path] = None,
             weights: Optional[Path] = None, locate: bool = False, layout=None, dp_equivalence: bool = False,
             save_tensors: bool = False, arbitrate: bool = True, threads: Optional[int] = None,
             torch_python: Optional[Path] = None, paddle_python: Optional[Path] = None, early_stop: bool = True,
             resume: bool = False):
    if device not in ("auto", "cpu", "gpu"):
        raise UsageError(f"--device: expected auto, cpu or gpu, got '{device}'")
    from multiprocess import resource_tracker

    # the process multiprocess starts beside the first worker, started now on the core this
    # start-up leaves idle rather than beside the two workers' own start
    resource_tracker.ensure_running()
    from harness import api, coordinator

    opts = api.options(cfg, out=out_dir, timeout=timeout, startup_timeout=startup_timeout, device=device,
                       benchmark=benchmark, weights=weights, locate=locate, layout=layout,
                       dp_equivalence=dp_equivalence, save_tensors=save_tensors, arbitrate=arbitrate,
                       threads=threads, torch_python=torch_python, paddle_python=paddle_python,
                       early_stop=early_stop, resume=resume)
    # SIGTERM unwinds like Ctrl-C, so the workers are stopped and the shared-memory folder removed
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if "train" in cfg.checks and cfg.train.is_run:  # a long run outlives its terminal (progress.log keeps going)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    with Progress(err, quiet or as_json) as progress:
        report = coordinator.run(cfg, opts, progress)
    data = report.to_json()
    try:
        if as_json:
            sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
        else:
            from harness.report.console import print_report

            print_report(out, data, str(opts.out_dir), verbose=verbose, quiet=quiet)
    except OSError:
        pass  # the terminal went away (a hung-up ssh session): the report is in the artifacts folder
    raise typer.Exit(EXIT_ALIGNED if report.aligned else EXIT_MISALIGNED)


def _resolve(pair_toml: Optional[Path], zoo: Optional[str], *, checks: Optional[str] = None,
             iters: Optional[int] = None):
    """The run's config, with --checks and --iters applied."""
    if (pair_toml is None) == (zoo is None):
        raise UsageError("give exactly one of PAIR_TOML or --zoo NAME (see `reprod-harness zoo`)")
    cfg = parse.load_zoo(zoo) if zoo else parse.load(pair_toml)
    if checks:
        cfg = cfg.replace(checks=parse.parse_checks(checks, lambda m: UsageError(f"--checks: {m}")), checks_given=True)
    if iters:
        cfg = cfg.replace(train=dataclasses.replace(cfg.train, iters=iters))
    return cfg


def _layout(cfg, *, nprocs, devices, placement, nnodes, node_rank, master, ips):
    from harness.workers.ranks import Layout

    try:
        device_ids = tuple(int(d) for d in devices.split(",")) if devices else ()
    except ValueError:
        raise UsageError(f"--devices: expected comma-separated GPU ids like 0,1, got '{devices}'") from None
    return Layout(nprocs=nprocs or cfg.distributed.nprocs, devices=device_ids, placement=placement,
                  backend=cfg.distributed.backend, nnodes=nnodes, node_rank=node_rank, master=master,
                  ips=tuple(a.strip() for a in ips.split(",")) if ips else ())


TIMEOUT_HELP = "Seconds any single step (or make_batch after the first) may take before the workers are stopped (exit 3)."
STARTUP_HELP = ("Seconds the start-up may take (the pair's import and first batch, spawn, framework import, the "
                "pair's build, weights shared, joining the ranks) before the workers are stopped (exit 3); apart "
                "from --timeout.")
PYTHON_HELP = ("The {side} worker's Python, from an environment of its own with the harness installed "
               "(README: one environment per framework).")
PYTHON_DEFAULT = "[workers] {side}_python of the TOML, else this interpreter"


NO_EARLY_STOP = typer.Option(False, "--no-early-stop", help="A training run ([train] epochs or steps) trains to the end even when its curves leave the band.", show_default="off: it stops after [train] patience evaluations outside the band")
RESUME = typer.Option(False, "--resume", help="Continue an interrupted training run from the last evaluation it kept (in <out>.training), its curves so far kept.", show_default="off")


def _python_option(side: str, default_shown: str = PYTHON_DEFAULT):
    return typer.Option(None, f"--{side}-python", help=PYTHON_HELP.format(side=side),
                        show_default=default_shown.format(side=side))


@app.command()
@guarded
def run(
    pair_toml: Optional[Path] = typer.Argument(None, help="The run's TOML file (reprod-harness init writes one; docs/design.md section 2 lists every key).", show_default="none: give --zoo"),
    zoo: Optional[str] = typer.Option(None, "--zoo", help="Run a built-in pair instead (see reprod-harness zoo).", show_default="none"),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Artifacts folder.", show_default="artifacts/<name>"),
    checks: Optional[str] = typer.Option(None, "--checks", help="Comma-separated, e.g. forward,loss; from data, init, forward, metric, loss, lr, backward, train (init: each side's freshly built model; data: the pair's own data_torch/data_paddle).", show_default="the TOML's checks, else data (when the pair defines its own), forward, metric, loss, lr, backward, train"),
    iters: Optional[int] = typer.Option(None, "--iters", min=1, help="Override [train] iters (steps of the backward check).", show_default="[train] iters"),
    timeout: float = typer.Option(900.0, "--timeout", min=1.0, help=TIMEOUT_HELP),
    startup_timeout: float = typer.Option(900.0, "--startup-timeout", min=1.0, help=STARTUP_HELP),
    device: str = typer.Option("auto", "--device", help="auto (GPU when the framework sees one) | cpu | gpu."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="CPU threads per worker, fixed for the run (torch's CPU reductions round differently with the count: pin it to reproduce a run bit for bit).", show_default="half the cores each; a worker whose counterpart has finished takes over its cores"),
    as_json: bool = typer.Option(False, "--json", help="Print report.json to stdout instead of the console report.", show_default="off"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress; print only the verdict line and the artifacts path.", show_default="off"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show every key of every check.", show_default="off"),
    nprocs: Optional[int] = typer.Option(None, "--nprocs", min=1, help="Ranks per framework: paddle.DataParallel vs torch DDP.", show_default="[distributed] nprocs"),
    dp_equivalence: bool = typer.Option(False, "--dp-equivalence", help="Also compare each framework's N-rank run with its 1-rank run.", show_default="off"),
    devices: Optional[str] = typer.Option(None, "--devices", help="GPU ids for the ranks, e.g. 0,1,2,3 (nccl).", show_default="none: CPU (gloo)"),
    placement: str = typer.Option("shared", "--placement", help="shared: both frameworks on the same cards; split: each on its half."),
    nnodes: int = typer.Option(1, "--nnodes", min=1, help="Machines in the run (each runs this command)."),
    node_rank: int = typer.Option(0, "--node-rank", min=0, help="This machine's index among --nnodes."),
    master: Optional[str] = typer.Option(None, "--master", help="ADDR:PORT of the rendezvous when --nnodes > 1.", show_default="none"),
    ips: Optional[str] = typer.Option(None, "--ips", help="Every node's address, in node-rank order, when --nnodes > 1 (as paddle.distributed.launch --ips).", show_default="none"),
    weights: Optional[Path] = typer.Option(None, "--weights", help="Start both models from this checkpoint (.pt/.pth torch, .pdparams paddle).", show_default="none: torch's initial weights"),
    benchmark: Optional[Path] = typer.Option(None, "--benchmark", help="reprod_log .npy with the metric the paddle train run must reach (e.g. a paper's), judged with the train tolerance.", show_default="none"),
    locate: bool = typer.Option(False, "--locate", help="Trace every module (outputs, gradients, updates, BatchNorm statistics) even when the checks pass; on a failure this always happens.", show_default="off"),
    float32_only: bool = typer.Option(False, "--float32-only", help="Never re-run a failed check in float64 to tell round-off from a real difference; float32's own rules decide (labelled fallback in report.json).", show_default="off: a failed check is arbitrated in float64"),
    save_tensors: bool = typer.Option(False, "--save-tensors", help="Save parameters and gradients whole (bp_params_*.npy, bp_grads_*.npy) whatever their size; beyond 64 MiB only per-tensor statistics are saved otherwise.", show_default="off"),
    torch_python: Optional[Path] = _python_option("torch"), paddle_python: Optional[Path] = _python_option("paddle"),
    no_early_stop: bool = NO_EARLY_STOP, resume: bool = RESUME,
):
    """Run the checks of a pair and write the artifacts (report.html among them).

    Exit 0 aligned, 1 misaligned, 2 usage or config error, 3 worker failure.

    \b
    Examples:
      reprod-harness run pair.toml
      reprod-harness run --zoo mlp --checks forward,loss --out /tmp/mlp
      reprod-harness run pair.toml -q            # the verdict line and the artifacts path
      reprod-harness run pair.toml --json > report.json
      reprod-harness run pair.toml --nprocs 2 --dp-equivalence
      reprod-harness run examples/digits/pair.toml --resume   # continue an interrupted training run
      reprod-harness run pair.toml --torch-python .venv-torch/bin/python --paddle-python .venv-paddle/bin/python
    """
    cfg = _resolve(pair_toml, zoo, checks=checks, iters=iters)
    layout = _layout(cfg, nprocs=nprocs, devices=devices, placement=placement, nnodes=nnodes, node_rank=node_rank,
                     master=master, ips=ips)
    _execute(cfg, out_dir=out_dir, timeout=timeout, startup_timeout=startup_timeout, device=device, as_json=as_json,
             quiet=quiet, verbose=verbose, benchmark=benchmark, weights=weights, locate=locate, layout=layout,
             dp_equivalence=dp_equivalence, save_tensors=save_tensors, arbitrate=not float32_only, threads=threads,
             torch_python=torch_python, paddle_python=paddle_python, early_stop=not no_early_stop, resume=resume)


@app.command()
@guarded
def demo(
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Artifacts folder.", show_default="artifacts/tiny_transformer"),
    timeout: float = typer.Option(900.0, "--timeout", min=1.0, help=TIMEOUT_HELP),
):
    """Run the built-in tiny_transformer pair through every check (about 5 s on a 2-core CPU)."""
    _execute(parse.load_zoo("tiny_transformer"), out_dir=out_dir, timeout=timeout)


@app.command()
@guarded
def convert(
    pair_toml: Path = typer.Option(..., "--pair", help="The pair whose models define the mapping."),
    torch_weights: Optional[Path] = typer.Option(None, "--torch-weights", help="A torch state dict (.pt/.pth), loaded with weights_only=True; this or --paddle-weights.", show_default="none"),
    paddle_weights: Optional[Path] = typer.Option(None, "--paddle-weights", help="A paddle state dict (.pdparams); this or --torch-weights.", show_default="none"),
    out_path: Path = typer.Option(..., "--out", help="Where to write the other framework's checkpoint."),
    timeout: float = typer.Option(900.0, "--timeout", min=1.0, help=TIMEOUT_HELP),
    startup_timeout: float = typer.Option(900.0, "--startup-timeout", min=1.0, help=STARTUP_HELP),
    torch_python: Optional[Path] = _python_option("torch"),
    paddle_python: Optional[Path] = _python_option("paddle"),
):
    """Convert a checkpoint between the frameworks with the same mapping run uses.

    \b
    Examples:
      reprod-harness convert --pair pair.toml --torch-weights model.pt --out model.pdparams
      reprod-harness convert --pair pair.toml --paddle-weights model.pdparams --out model.pt
    """
    from harness import api, coordinator
    from harness.mapping import checkpoints

    source = checkpoints.validate_conversion(torch_weights=torch_weights, paddle_weights=paddle_weights,
                                             target=out_path)
    cfg = parse.load(pair_toml)
    chosen = api.interpreters(cfg, torch_python=torch_python, paddle_python=paddle_python)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwinds like Ctrl-C: the workers are stopped
    with Progress(err, False) as progress:
        side = coordinator.convert_checkpoint(cfg, source=source, target=out_path, timeout=timeout,
                                              startup_timeout=startup_timeout, progress=progress,
                                              interpreters=chosen)
    out.print(f"wrote {out_path} ({side} checkpoint, mapped strictly)")


@app.command()
@guarded
def init(
    directory: Path = typer.Argument(Path("."), help="Folder for pair.toml and pair.py (created if missing)."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing files.", show_default="off"),
):
    """Write a commented starter pair.toml + pair.py that runs as is.

    pair.toml lists every section and option with its default.

    \b
    Example:
      reprod-harness init my_port && reprod-harness run my_port/pair.toml
    """
    templates = parse.templates_dir()  # the starter pair imports torch and paddle, so it lives in backends/
    targets = [directory / name for name in ("pair.toml", "pair.py")]
    existing = [str(t) for t in targets if t.exists()]
    if existing and not force:
        raise UsageError(f"{', '.join(existing)} already exist (use --force to overwrite)")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for target in targets:
            target.write_text((templates / target.name).read_text())
    except OSError as exc:
        raise UsageError(f"{exc.filename or directory}: cannot write it: {exc.strerror or exc}") from None
    out.print(f"wrote {targets[0]} and {targets[1]}; next: reprod-harness run {targets[0]}")


@app.command()
@guarded
def zoo():
    """List the built-in model pairs (run one with `reprod-harness run --zoo NAME`)."""
    import ast

    for name in parse.zoo_names():
        doc = ast.get_docstring(ast.parse((parse.zoo_dir() / name / "pair.py").read_text())) or ""
        summary = doc.split(":", 1)[-1].strip().splitlines()[0] if doc else ""
        out.print(f"[bold]{name:18}[/] {summary}", highlight=False)


@app.command()
@guarded
def compare(
    reference: Path = typer.Argument(..., help="Reference side (torch), e.g. forward_torch.npy."),
    port: Path = typer.Argument(..., help="Port side (paddle), e.g. forward_paddle.npy."),
    threshold: float = typer.Option(1e-6, "--threshold", min=0.0, help="Mean |diff| allowed per key (reprod_log's criterion)."),
    max_threshold: Optional[float] = typer.Option(None, "--max-threshold", min=0.0, help="Max |diff| allowed per key.", show_default="100 x threshold"),
    allow_nan: bool = typer.Option(False, "--allow-nan", help="Pass NaN/Inf found at exactly the same places on both sides.", show_default="off"),
    log: Optional[Path] = typer.Option(None, "--log", help="Write a reprod_log-format diff log here.", show_default="none"),
    as_json: bool = typer.Option(False, "--json", help="Print the per-key results as JSON.", show_default="off"),
):
    """Compare two reprod_log .npy files (np.save of a dict of arrays) strictly; exit 0 aligned, 1 not.

    \b
    Example:
      reprod-harness compare forward_torch.npy forward_paddle.npy --log forward_diff.log
    """
    from harness.report.compare import compare_files
    from harness.report.console import key_table

    result = compare_files(reference, port, threshold=threshold, max_threshold=max_threshold, log=log,
                           allow_nan=allow_nan)
    data = result.to_json()
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
    else:
        data["name"] = f"{reference.name} vs {port.name}"
        out.print(key_table(data, width=out.width))
        verdict = "[bold green]ALIGNED[/]" if result.passed else f"[bold red]MISALIGNED[/]: {escape(result.why)}"
        out.print(verdict + (f"  log: {log}" if log else ""))
    raise typer.Exit(EXIT_ALIGNED if result.passed else EXIT_MISALIGNED)


@app.command("report")
@guarded
def report_cmd(
    run_dir: Path = typer.Argument(..., help="A finished run's artifacts folder (holds report.json), or the report.json."),
    as_json: bool = typer.Option(False, "--json", help="Print report.json instead of the console report.", show_default="off"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show every key of every check.", show_default="off"),
    html: bool = typer.Option(False, "--html", help="(Re)write report.html beside report.json, from it and the run's .npy files.", show_default="off"),
):
    """Re-render a finished run from its report.json; exit 0 if it was aligned, else 1.

    \b
    Examples:
      reprod-harness report artifacts/my-model
      reprod-harness report artifacts/my-model --html   # writes its report.html
    """
    from harness.report.console import print_report
    from harness.report.runreport import read_report

    path = run_dir / "report.json" if run_dir.is_dir() else run_dir
    if not path.is_file():
        raise UsageError(f"{path}: no report.json (did the run finish?)")
    try:
        data = read_report(path)
    except (ValueError, OSError) as exc:
        raise UsageError(f"{path}: cannot read the report: {exc}") from None
    if html:
        from harness.report.html import write_html
        from harness.safety import manifest

        written = write_html(path.parent, data)
        manifest.amend(path.parent, written.name)  # the run's own file still: the next run may replace it
        out.print(f"wrote {escape(str(written))}", highlight=False, soft_wrap=True)
    elif as_json:
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
    else:
        print_report(out, data, str(path.parent), verbose)
    raise typer.Exit(EXIT_ALIGNED if data.get("aligned") else EXIT_MISALIGNED)


@app.command()
@guarded
def doctor(
    torch_python: Optional[Path] = _python_option("torch", "[workers] torch_python of --pair, else this interpreter"),
    paddle_python: Optional[Path] = _python_option("paddle", "[workers] paddle_python of --pair, else this interpreter"),
    pair_toml: Optional[Path] = typer.Option(None, "--pair", help="Read the workers' interpreters from this run's TOML ([workers]).", show_default="none"),
):
    """Show Python, numpy, torch and paddle versions, CUDA builds and visible devices, as each
    worker's interpreter sees them.

    \b
    Examples:
      reprod-harness doctor
      reprod-harness doctor --torch-python .venv-torch/bin/python --paddle-python .venv-paddle/bin/python
    """
    import platform

    import numpy

    from harness import api
    from harness.workers import interpreters
    from harness.workers.doctor import INSTALL_HINT, describe, describe_interpreter, probe

    chosen = api.interpreters(parse.load(pair_toml) if pair_toml else None, torch_python=torch_python,
                              paddle_python=paddle_python)
    infos = interpreters.describe_all(chosen)
    out.print(f"reprod-harness {__version__}")
    out.print(f"python         {platform.python_version()} ({sys.executable})")
    out.print(f"numpy          {numpy.__version__}")
    missing = []
    for fw in ("torch", "paddle"):
        usable = "error" not in infos[fw] and "missing" not in infos[fw]
        python = chosen[fw].path if fw in chosen else None
        info = probe(fw, python=python) if usable else {"error": "its worker python cannot serve (next line)"}
        if "error" in info:
            missing.append(fw)
            hint = f"{python} -m {INSTALL_HINT[fw]}" if python else INSTALL_HINT[fw]
            out.print(f"{fw:14} [red]not usable[/]: {escape(info['error'])}\n{'':15}install: {escape(hint)}",
                      highlight=False)
        else:
            out.print(f"{fw:14} {describe(info)}", highlight=False)
        out.print(f"{'':15}worker python: {escape(describe_interpreter(infos[fw]))}", highlight=False)
    interpreters.check(infos)  # an interpreter that cannot serve, or a value that differs: exit 2
    if missing:
        raise typer.Exit(1)


def main() -> None:
    # one program name however it was started (python -m harness, the script), so usage lines and
    # shell completion (_REPROD_HARNESS_COMPLETE) read the same
    app(prog_name="reprod-harness")


if __name__ == "__main__":
    main()
