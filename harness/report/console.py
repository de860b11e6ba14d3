"""The console view of a report, answer first: the verdict, one row per check, the first divergence
(where), then the failing keys of the first failing check (what); later failing checks are folded
into a line each, since they usually follow from the first. Renders what it is given; decides
nothing (harness/report/summary.py ranks the keys)."""

from __future__ import annotations

import io

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.padding import Padding
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from harness.report import summary
from harness.verdict.diff import fmt

FAILING_KEYS_SHOWN = 6  # of the first failing check, without -v; -v and report.html show all
NOTES_SHOWN = 5  # per check


def _verdict(passed: bool) -> str:
    return "[bold green]PASS[/]" if passed else "[bold red]FAIL[/]"


def _table(title: str | None = None) -> Table:
    return Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)


def _shape(shape) -> str:
    return "x".join(map(str, shape)) if shape else "scalar" if shape == [] else "-"


KEY_CELL = 28  # a worst-key cell: longer names keep their (most specific) end; the keys list shows them whole


def _short(key: str, width: int = KEY_CELL) -> str:
    return key if len(key) <= width else "…" + key[-(width - 1):]


def summary_table(report: dict) -> Table:
    """A row per check: keys compared, the worst key's measure against its named limit, verdict."""
    table = _table()
    table.add_column("check", no_wrap=True, min_width=max(len(c["name"]) for c in report["checks"]) if report["checks"] else 5)
    table.add_column("keys", justify="right", no_wrap=True, min_width=5)
    table.add_column("worst key", no_wrap=True, overflow="ellipsis")  # a key name is never broken
    table.add_column("worst |d| vs limit", ratio=1, min_width=18)
    table.add_column("verdict", no_wrap=True, min_width=4)
    for check in report["checks"]:
        w = summary.worst(check)
        n = summary.released(check)
        table.add_row(check["name"], f"{summary.compared(check)}/{len(check['keys'])}",
                      escape(_short(w["key"]) if w else "-"), escape(summary.against(w)),
                      _verdict(check["passed"]) + (f" [dim]{n} by rule[/]" if n else ""))
    return table


def key_table(check: dict, *, limit: int | None = None) -> Table:
    """Every key with its statistics, failing first (-v, `compare`): a wide view."""
    keys = sorted(check["keys"], key=lambda k: k["passed"])
    shown = keys if limit is None else keys[:limit]
    table = _table(f"{escape(check['name'])}: {escape(check.get('reason', 'aligned'))}")
    table.add_column("key", no_wrap=True, overflow="ellipsis")
    table.add_column("shape", no_wrap=True)
    for col in ("mean |d|", "max |d|", "max rel"):
        table.add_column(col, justify="right", no_wrap=True)
    table.add_column("limit")
    table.add_column("verdict / reason", ratio=1)
    for k in shown:
        why = ("PASS" + (f" ({k['rule']})" if k.get("rule") else "")) if k["passed"] else k.get("reason", "")
        table.add_row(escape(k["key"]), _shape(k.get("shape")), fmt(k.get("mean_abs")), fmt(k.get("max_abs")),
                      fmt(k.get("max_rel")), escape(summary.limit_text(k)), escape(why),
                      style=None if k["passed"] else "red")
    if len(keys) > len(shown):  # a caption, not a row: it wraps, and never widens the key column
        rest = keys[len(shown):]
        table.caption = f"... {len(rest)} more ({sum(not k['passed'] for k in rest)} failing)"
        table.caption_justify = "left"
    return table


def print_failing_keys(console: Console, check: dict, limit: int = FAILING_KEYS_SHOWN) -> None:
    """The first failing check's failing keys as a list: the key and its shape on one line, the
    reason below it, indented and wrapped. A key name is never broken, however long, and the
    reason keeps the width at 80 columns (a table squeezes one or the other)."""
    bad = [k for k in check["keys"] if not k["passed"]]
    console.print(f"[bold]{escape(check['name'])}[/]: {escape(check.get('reason', 'failed'))}", highlight=False)
    for k in bad[:limit]:
        head, reason = Text.assemble((k["key"], "bold red"), "  ", _shape(k.get("shape"))), k.get("reason", "")
        if head.cell_len + 2 + len(reason) <= console.width:  # one line when it fits
            console.print(Text.assemble(head, "  ", (reason, "red")), soft_wrap=True)
            continue
        console.print(head, soft_wrap=True)
        console.print(Padding(Text(reason, style="red"), (0, 0, 0, 6)))
    if len(bad) > limit:
        console.print(f"  ... {len(bad) - limit} more failing keys: -v or report.html", highlight=False)


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


def _type(text: str) -> str:
    """`Conv2d / Conv2D` says one thing twice: shown once when the names differ only in case."""
    parts = [p.strip() for p in text.split(" / ")]
    return parts[0] if len(parts) == 2 and parts[0].lower() == parts[1].lower() else text


def around_table(div: dict) -> Table:
    """Modules executed around the diverging one (or, for gradients, in backward order)."""
    rows = div["around"]
    grad = any("out_grad_diff" in r for r in rows)
    table = _table("modules around it" + (" (backward order)" if grad else ""))
    renamed = any(r.get("paddle") and r["paddle"] != r.get("module", "").split(" [")[0] for r in rows)
    table.add_column("module", no_wrap=True, overflow="ellipsis")
    if renamed:
        table.add_column("paddle", no_wrap=True, overflow="ellipsis")
    table.add_column("type")
    for col in ("in shape", "out shape", "in |d|", "out grad |d|" if grad else "out |d|", "status"):
        table.add_column(col, no_wrap=True)
    for r in rows:
        out_diff = r.get("out_grad_diff") if grad else r.get("out_diff")
        status = r.get("status", "")
        table.add_row(escape(r.get("module", "")), *([escape(r.get("paddle") or "")] if renamed else []),
                      escape(_type(r.get("type", ""))), _shape(r.get("in_shape")), _shape(r.get("out_shape")),
                      fmt(r.get("in_diff")), fmt(out_diff), status,
                      style="bold red" if status == "HERE" else "red" if status == "DIFFERS" else None)
    return table


def print_divergence(console: Console, div: dict) -> None:
    console.print(f"[bold red]first divergence[/]: {escape(summary.divergence_line(div))}", highlight=False)
    if div.get("path"):
        console.print(divergence_tree(div["path"]))
    if div.get("around"):
        console.print(around_table(div))


def _notes(report: dict, checks: list) -> list:
    notes = list(report.get("notes", []))
    for check in checks:
        own = check.get("notes", [])
        notes += [f"{check['name']}: {n}" for n in own[:NOTES_SHOWN]]
        if len(own) > NOTES_SHOWN:
            notes.append(f"{check['name']}: ... {len(own) - NOTES_SHOWN} more notes in report.json")
    return notes


def _folded(console: Console, first: dict, later: list) -> None:
    """Checks failing after the first: usually its consequence, so one line each."""
    if not later:
        return
    console.print(f"also failing, likely as a consequence of {escape(first['name'])} (-v shows their keys):",
                  highlight=False)
    for check in later:
        console.print(f"  {escape(check['name']):10} {escape(check.get('reason', 'failed'))}", highlight=False)


def verdict_line(report: dict) -> str:
    head = escape(summary.headline(report))
    if report.get("aligned"):
        return head.replace("ALIGNED", "[bold green]ALIGNED[/]", 1)
    return head.replace("MISALIGNED", "[bold red]MISALIGNED[/]", 1)


def print_report(console: Console, report: dict, out_dir: str | None = None, verbose: bool = False,
                 quiet: bool = False) -> None:
    """verdict -> checks -> where -> what -> notes, time, verdict and artifacts again (the last
    line a terminal leaves visible). quiet: the verdict line and the artifacts path only."""
    console.print(verdict_line(report), highlight=False)
    if quiet:
        if out_dir:
            console.print(f"artifacts: {escape(out_dir)}", highlight=False, soft_wrap=True)
        return
    console.print(summary_table(report))
    bad = summary.failing_checks(report)
    if report.get("first_divergence"):
        print_divergence(console, report["first_divergence"])
    if verbose:
        for check in report["checks"]:
            console.print(key_table(check))
    elif bad:
        print_failing_keys(console, bad[0])
        _folded(console, bad[0], bad[1:])
    for note in _notes(report, report["checks"] if verbose or not bad else bad[:1]):
        console.print(f"[yellow]note[/]: {escape(note)}", highlight=False)
    _footer(console, report, out_dir)


def _footer(console: Console, report: dict, out_dir: str | None) -> None:
    timing = report.get("timing") or {}
    if timing:
        console.print(f"time: {timing.get('wall_s', 0):.1f} s wall (torch {timing.get('torch_s', 0):.1f} s, "
                      f"paddle {timing.get('paddle_s', 0):.1f} s of compute, run side by side)")
    verdict = "[bold green]ALIGNED[/]" if report["aligned"] else "[bold red]MISALIGNED[/]"
    console.print(verdict + (f"  artifacts: {escape(out_dir)}" if out_dir else ""), highlight=False, soft_wrap=True)


def as_text(report: dict, out_dir: str | None = None, *, width: int = 100, verbose: bool = False) -> str:
    """The console report rendered to plain text at a fixed width, without colour codes."""
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, color_system=None, force_terminal=False, highlight=False)
    print_report(console, report, out_dir, verbose=verbose)
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines()) + "\n"  # tables pad with blanks
