"""The console view of a report, answer first: the verdict, one row per check, the first divergence
(where), then the failing keys of the first failing check (what); later failing checks are folded
into a line each, since they usually follow from the first. Renders what it is given; decides
nothing (harness/report/summary.py ranks the keys)."""

from __future__ import annotations

import io
import re

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


SEPARATOR = 3  # what a table puts between two columns (padding and rule)
LIMIT_CELL = 22  # the narrowest "worst |d| vs limit" cell; its text wraps at spaces


def wrap_name(name: str, width: int) -> str:
    """A dotted name in lines of at most `width`, each ending after a dot where it can: a table
    cell wraps a name instead of cutting it (`…ion.output.LayerNorm.weight` told nothing)."""
    if len(name) <= width:
        return name
    lines, line = [], ""
    for part in re.findall(r"[^.]*\.|[^.]+$", name):
        if line and len(line) + len(part) > width:
            lines.append(line)
            line = ""
        while len(part) > width:
            lines.append(part[:width])
            part = part[width:]
        line += part
    return "\n".join(lines + ([line] if line else []))


def _span(widths: list) -> int:
    return sum(widths) + SEPARATOR * (len(widths) - 1)


def summary_table(report: dict, width: int = 100) -> Table:
    """A row per check: keys compared, the worst key's measure against its named limit, verdict.
    Every cell whole at any width: the worst key wraps after its dots, the limit at spaces, and the
    verdict (with how many keys a named rule released, below it) is never squeezed."""
    rows = []
    for check in report["checks"]:
        w, n = summary.worst(check), summary.released(check)
        rows.append((check["name"], f"{summary.compared(check)}/{len(check['keys'])}", w["key"] if w else "-",
                     summary.against(w), _verdict(check["passed"]) + (f"\n[dim]{n} by rule[/]" if n else ""),
                     len(f"{n} by rule") if n else 4))
    check_w = max([5] + [len(r[0]) for r in rows])
    keys_w = max([4] + [len(r[1]) for r in rows])
    verdict_w = max([7] + [r[5] for r in rows])
    room = width - _span([check_w, keys_w, 0, LIMIT_CELL, verdict_w])
    key_w = max(12, min(max([9] + [len(r[2]) for r in rows]), room))
    table = _table()
    table.add_column("check", no_wrap=True, width=check_w)
    table.add_column("keys", justify="right", no_wrap=True, width=keys_w)
    table.add_column("worst key", no_wrap=True, width=key_w)
    table.add_column("worst |d| vs limit", ratio=1, min_width=LIMIT_CELL)
    table.add_column("verdict", no_wrap=True, width=verdict_w)
    for name, keys, key, measured, verdict, _ in rows:
        table.add_row(name, keys, escape(wrap_name(key, key_w)), escape(measured), verdict)
    return table


def key_table(check: dict, *, limit: int | None = None, width: int = 160) -> Table:
    """Every key with its statistics, failing first (-v, `compare`): a wide view, key names wrapped
    after their dots where the width is short."""
    keys = sorted(check["keys"], key=lambda k: k["passed"])
    shown = keys if limit is None else keys[:limit]
    key_w = max(16, min(max([3] + [len(k["key"]) for k in shown]), width // 3))
    table = _table(f"{escape(check['name'])}: {escape(check.get('reason', 'aligned'))}")
    table.add_column("key", no_wrap=True, width=key_w)
    table.add_column("shape", no_wrap=True)
    for col in ("mean |d|", "max |d|", "max rel"):
        table.add_column(col, justify="right", no_wrap=True)
    table.add_column("limit")
    table.add_column("verdict / reason", ratio=1)
    for k in shown:
        why = ("PASS" + (f" ({k['rule']})" if k.get("rule") else "")) if k["passed"] else k.get("reason", "")
        table.add_row(escape(wrap_name(k["key"], key_w)), _shape(k.get("shape")), fmt(k.get("mean_abs")), fmt(k.get("max_abs")),
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


def _prefix(names: list) -> str:
    """The dotted prefix every name shares, short of the whole of any of them (table rows show the rest)."""
    parts = [n.split(" [")[0].split(".") for n in names if n and n != "(model)"]
    if not parts or len(parts) < len(names):
        return ""
    common = []
    for level in zip(*parts):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    common = common[: min(len(p) for p in parts) - 1]
    return ".".join(common) + "." if common else ""


def _around_cells(rows: list, grad: bool) -> tuple:
    """(title suffix, cells per row) with the names relative to the prefix all rows share."""
    t_prefix, p_prefix = _prefix([r.get("module", "") for r in rows]), _prefix([r.get("paddle") or "" for r in rows])
    cells = []
    for r in rows:
        module, paddle = (r.get("module") or "(model)")[len(t_prefix):], (r.get("paddle") or "")[len(p_prefix):]
        cells.append({"module": module, "paddle": paddle if paddle != module.split(" [")[0] else "",
                      "type": _type(r.get("type", "")), "in shape": _shape(r.get("in_shape")),
                      "out shape": _shape(r.get("out_shape")), "in |d|": fmt(r.get("in_diff")),
                      "out |d|": fmt(r.get("out_grad_diff") if grad else r.get("out_diff")),
                      "status": r.get("status", "")})
    where = f"in {t_prefix[:-1]}" if t_prefix else ""
    if p_prefix and p_prefix != t_prefix:
        where += f"{'; ' if where else ''}paddle {p_prefix[:-1]}"
    return (f" ({where})" if where else ""), cells


def around_table(div: dict, width: int = 160) -> Table:
    """Modules executed around the diverging one (or, for gradients, in backward order). Where the
    width is short the paddle name goes below the torch one, then the type and shape columns go,
    then the names wrap: the diffs and the status stay."""
    rows = div["around"]
    grad = any("out_grad_diff" in r for r in rows)
    where, cells = _around_cells(rows, grad)
    renamed = any(c["paddle"] for c in cells)
    out_col = "out grad |d|" if grad else "out |d|"

    def natural(col: str) -> int:
        return max([len(col)] + [len(line) for c in cells for line in c[col].split("\n")])

    for c in cells:
        c["both"] = c["module"] + (f"\n→ {c['paddle']}" if c["paddle"] else "")
    layouts = [["module", "paddle", "type", "in shape", "out shape"] if renamed else
               ["module", "type", "in shape", "out shape"], ["both", "type", "in shape", "out shape"],
               ["both", "type"], ["both"]]
    fixed = ["in |d|", "out |d|", "status"]
    columns = next((cols for cols in layouts if _span([natural(c) for c in cols + fixed]) <= width), layouts[-1])
    name_w = max(12, width - _span([natural(c) for c in fixed] + [0]))
    table = _table("modules around it" + (" (backward order)" if grad else "") + where)
    headers = {"both": "module" + (" → paddle" if renamed else ""), "out |d|": out_col}
    for col in columns + fixed:
        table.add_column(headers.get(col, col), no_wrap=True)
    for c in cells:
        values = [escape(wrap_name(c[col], name_w) if col == "both" and columns == layouts[-1] else c[col])
                  for col in columns + fixed]
        status = c["status"]
        table.add_row(*values, style="bold red" if status == "HERE" else "red" if status == "DIFFERS" else None)
    return table


def print_divergence(console: Console, div: dict) -> None:
    console.print(f"[bold red]first divergence[/]: {escape(summary.divergence_line(div))}", highlight=False)
    if div.get("path"):
        console.print(divergence_tree(div["path"]))
    if div.get("around"):
        console.print(around_table(div, console.width))


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
    console.print(summary_table(report, console.width))
    bad = summary.failing_checks(report)
    if report.get("first_divergence"):
        print_divergence(console, report["first_divergence"])
    if verbose:
        for check in report["checks"]:
            console.print(key_table(check, width=console.width))
    elif bad:
        print_failing_keys(console, bad[0])
        _folded(console, bad[0], bad[1:])
    for note in _notes(report, report["checks"] if verbose or not bad else bad[:1]):
        console.print(f"[yellow]note[/]: {escape(note)}", highlight=False)
    _warnings(console, report.get("warnings", []), verbose=verbose, misaligned=bool(bad))
    _footer(console, report, out_dir)


def _warnings(console: Console, warned: list, *, verbose: bool, misaligned: bool) -> None:
    """Python warnings raised in the workers (a library's deprecation, setuptools replacing
    distutils): in report.json, on the console with -v; a misaligned run counts them, since one
    (a loss broadcasting its target) may be the clue; an aligned run says nothing of them."""
    if verbose:
        for text in warned:
            console.print(f"[dim]warning[/]: {escape(text)}", highlight=False)
    elif warned and misaligned:
        console.print(f"[dim]{len(warned)} warning(s) raised in the workers: -v or report.json[/]", highlight=False)


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
