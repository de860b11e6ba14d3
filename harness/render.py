"""Rich rendering of results. Renders what it is given; decides nothing."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.tree import Tree

from harness.diff import fmt

MAX_KEYS_SHOWN = 12


def _verdict(passed: bool) -> str:
    return "[bold green]PASS[/]" if passed else "[bold red]FAIL[/]"


def summary_table(report: dict) -> Table:
    table = Table(title=f"reprod-harness: {report['name']}", title_justify="left")
    for col, kw in (
        ("check", {}),
        ("keys compared", {"justify": "right"}),
        ("worst mean abs diff", {"justify": "right"}),
        ("worst max abs diff", {"justify": "right"}),
        ("threshold", {"justify": "right"}),
        ("verdict", {"justify": "center"}),
    ):
        table.add_column(col, **kw)
    for check in report["checks"]:
        keys = check["keys"]
        compared = sum(1 for k in keys if k.get("count", 0) > 0)
        means = [k["mean_abs"] for k in keys if "mean_abs" in k]
        maxes = [k["max_abs"] for k in keys if "max_abs" in k]
        thresholds = sorted({k["rtol"] if "rtol" in k else k.get("threshold") for k in keys} - {None})
        thr = ", ".join(fmt(t) + (" rel" if any("rtol" in k for k in keys) else "") for t in thresholds[:2]) or "-"
        table.add_row(
            check["name"],
            f"{compared}/{len(keys)}",
            fmt(max(means) if means else None),
            fmt(max(maxes) if maxes else None),
            thr,
            _verdict(check["passed"]),
        )
    return table


def key_table(check: dict, *, only_failing: bool = False) -> Table:
    """Per-key detail, failing keys first; long lists folded with a count."""
    keys = sorted(check["keys"], key=lambda k: k["passed"])
    if only_failing:
        keys = [k for k in keys if not k["passed"]]
    table = Table(title=f"{check['name']}: {check.get('reason', 'aligned')}", title_justify="left")
    for col in ("key", "shape", "mean abs", "max abs", "max rel", "threshold", "verdict / reason"):
        table.add_column(col, overflow="fold")
    for k in keys[:MAX_KEYS_SHOWN]:
        style = None if k["passed"] else "red"
        shape = str(tuple(k["shape"])) if "shape" in k else "-"
        thr = f"{fmt(k['rtol'])} rel" if "rtol" in k else f"{fmt(k.get('threshold'))} / {fmt(k.get('max_threshold'))}"
        table.add_row(
            k["key"], shape, fmt(k.get("mean_abs")), fmt(k.get("max_abs")), fmt(k.get("max_rel")), thr,
            "PASS" if k["passed"] else f"FAIL {k.get('reason', '')}", style=style,
        )
    if len(keys) > MAX_KEYS_SHOWN:
        rest = keys[MAX_KEYS_SHOWN:]
        failing = sum(1 for k in rest if not k["passed"])
        table.add_row(f"... {len(rest)} more keys ({failing} failing)", "", "", "", "", "", "")
    return table


def divergence_tree(path: list) -> Tree:
    """The call path from the model to the diverging module, with the output diff at each level."""
    def label(level: dict) -> str:
        style = "red" if level.get("differs") else "green"
        diff = f"  [{style}]out mean |d| {fmt(level.get('diff'))}[/]" if level.get("diff") is not None else ""
        return f"{escape(level['module'])} [dim]({escape(level['type'])})[/]{diff}"

    tree = Tree(label(path[0]))
    node = tree
    for level in path[1:]:
        node = node.add(label(level))
    return tree


def around_table(div: dict) -> Table:
    """Modules executed around the diverging one (or, for gradients, in backward order)."""
    rows = div["around"]
    grad = any("out_grad_diff" in r for r in rows)
    table = Table(title="modules around it" + (" (backward order)" if grad else ""), title_justify="left")
    renamed = any(r.get("paddle") and r["paddle"] != r.get("module", "").split(" [")[0] for r in rows)
    cols = ["module", *(["paddle"] if renamed else []), "type", "in shape", "out shape", "in |d|",
            "out grad |d|" if grad else "out |d|", "status"]
    for col in cols:
        table.add_column(col, overflow="fold")

    def shape(s):
        return "x".join(map(str, s)) if s else "-"

    for r in rows:
        out_diff = r.get("out_grad_diff") if grad else r.get("out_diff")
        cells = [escape(r.get("module", "")), *([escape(r.get("paddle") or "")] if renamed else []),
                 escape(r.get("type", "")), shape(r.get("in_shape")), shape(r.get("out_shape")),
                 fmt(r.get("in_diff")), fmt(out_diff), r.get("status", "")]
        status = r.get("status")
        table.add_row(*cells, style="bold red" if status == "HERE" else "red" if status == "DIFFERS" else None)
    return table


def print_report(console: Console, report: dict, out_dir: str | None = None, verbose: bool = False) -> None:
    console.print(summary_table(report))
    for check in report["checks"]:
        if verbose or not check["passed"]:
            console.print(key_table(check, only_failing=not verbose and not check["passed"]))
    div = report.get("first_divergence")
    if div:
        where = f" at layer {div['layer']}" if div.get("layer") else ""
        step = f" (step {div['step']})" if div.get("step") is not None else ""
        console.print(f"[bold red]first divergence[/]: {div['check']}{where}{step}: {escape(div.get('detail', ''))}",
                      highlight=False)
        if div.get("path"):
            console.print(divergence_tree(div["path"]))
        if div.get("around"):
            console.print(around_table(div))
    notes = list(report.get("notes", []))
    for check in report["checks"]:
        shown = check.get("notes", [])[:5]
        notes += [f"{check['name']}: {n}" for n in shown]
        if len(check.get("notes", [])) > 5:
            notes.append(f"{check['name']}: ... {len(check['notes']) - 5} more notes in report.json")
    for note in notes:
        console.print(f"[yellow]note[/]: {escape(note)}", highlight=False)
    timing = report.get("timing") or {}
    if timing:
        console.print(
            f"time: {timing.get('wall_s', 0):.1f} s wall (torch {timing.get('torch_s', 0):.1f} s, "
            f"paddle {timing.get('paddle_s', 0):.1f} s of compute, run side by side)"
        )
    verdict = "[bold green]ALIGNED[/]" if report["aligned"] else "[bold red]MISALIGNED[/]"
    console.print(f"{verdict}" + (f"  artifacts: {out_dir}" if out_dir else ""))
