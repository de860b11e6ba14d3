"""report.html: the run in one self-contained file that works offline (inline CSS, inline SVG and
a few lines of inline script; nothing fetched). Answer first, as the console: verdict, checks,
the first divergence as a collapsible path tree with the modules around it, the loss and lr
curves with their tolerance band, per-key tables with a filter, notes, environment and timing."""

from __future__ import annotations

from html import escape
from pathlib import Path

from harness.report import curves, summary, svg
from harness.report.artifacts import atomic_write
from harness.verdict.diff import fmt

STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;max-width:1100px;padding:16px;color:#1d2330}
h1{font-size:20px;margin:0 0 4px} h2{font-size:16px;margin:24px 0 8px;border-bottom:1px solid #d9dde5}
.verdict{padding:12px 16px;border-radius:6px;color:#fff;font-weight:600}
.verdict.ok{background:#1f7a3a} .verdict.bad{background:#b3261e} .verdict.live{background:#5a6270}
table{border-collapse:collapse;margin:6px 0} td,th{padding:3px 10px;text-align:left;vertical-align:top}
th{background:#eef0f4} tr:nth-child(even) td{background:#f8f9fb}
td.key{font-family:ui-monospace,monospace;white-space:nowrap} td.num{text-align:right;font-variant-numeric:tabular-nums}
.pass{color:#1f7a3a;font-weight:600} .fail,.here{color:#b3261e;font-weight:600} .differs{color:#b3261e}
details{margin:2px 0 2px 14px} summary{cursor:pointer} code{font-family:ui-monospace,monospace}
.chart .band{fill:#9ec5f0;opacity:.45} .chart .torch{fill:none;stroke:#e07b00;stroke-width:2}
.chart .paddle{fill:none;stroke:#1f5fbf;stroke-width:1.4;stroke-dasharray:5 3} .chart .axis{fill:none;stroke:#888}
.chart circle.fail{fill:#b3261e} .chart text{font-size:11px} .chart .ok{fill:#1f7a3a} .chart .bad{fill:#b3261e}
.key-torch{fill:#e07b00} .key-paddle{fill:#1f5fbf} .key-band{fill:#9ec5f0}
.filter{margin:8px 0} .muted{color:#667}
"""

LIVE_RELOAD_S = 10  # how often a browser reloads the report of a training run still going

# The key filter: a substring and "failing only", also readable from the address
# (report.html#q=param:&failing=1), so a link can point at the keys that matter.
SCRIPT = """
function applyFilter(){
  var q=document.getElementById('q').value.toLowerCase(), f=document.getElementById('failing').checked, n=0;
  document.querySelectorAll('tr.keyrow').forEach(function(tr){
    var show=tr.dataset.key.toLowerCase().indexOf(q)>=0 && (!f || tr.dataset.passed==='0');
    tr.hidden=!show; if(show){n++;}
  });
  document.getElementById('shown').textContent=n+' keys shown';
}
(function(){
  var p=new URLSearchParams(location.hash.slice(1));
  document.getElementById('q').value=p.get('q')||'';
  document.getElementById('failing').checked=p.get('failing')==='1';
  document.getElementById('q').addEventListener('input',applyFilter);
  document.getElementById('failing').addEventListener('change',applyFilter);
  applyFilter();
})();
"""


def _e(value) -> str:
    return escape("" if value is None else str(value))


def _verdict(passed: bool) -> str:
    return '<span class="pass">PASS</span>' if passed else '<span class="fail">FAIL</span>'


def _table(head: list, rows: list, cls: str = "") -> str:
    th = "".join(f"<th>{_e(h)}</th>" for h in head)
    return f'<table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _checks(report: dict) -> str:
    rows = []
    for check in report["checks"]:
        w = summary.worst(check)
        n = summary.released(check)
        rows.append(f'<tr class="checkrow" data-check="{_e(check["name"])}"><td>{_e(check["name"])}</td>'
                    f'<td class="num">{summary.compared(check)}/{len(check["keys"])}</td>'
                    f'<td class="key">{_e(w["key"] if w else "-")}</td><td>{_e(summary.against(w))}</td>'
                    f'<td>{_verdict(check["passed"])}{f" ({n} by rule)" if n else ""}</td>'
                    f'<td>{_e(check.get("reason", ""))}</td></tr>')
    return "<h2>Checks</h2>" + _table(["check", "keys", "worst key", "worst |d| vs limit", "verdict", "why"], rows)


def _tree(path: list) -> str:
    """The call path as nested <details>, open down to the diverging module."""
    html = ""
    for depth, level in enumerate(reversed(path)):
        diff = f' <span class="{"differs" if level.get("differs") else "muted"}">out mean |d| {fmt(level.get("diff"))}</span>' \
            if level.get("diff") is not None else ""
        here = ' <span class="here">&larr; the first divergence</span>' if depth == 0 else ""
        html = (f'<details open class="level"><summary><code>{_e(level["module"])}</code> '
                f'<span class="muted">({_e(level.get("type"))})</span>{diff}{here}</summary>{html}</details>')
    return html


def _around(div: dict) -> str:
    grad = any("out_grad_diff" in r for r in div["around"])
    rows = []
    for r in div["around"]:
        status = r.get("status", "")
        shape = lambda s: "x".join(map(str, s)) if s else "-"  # noqa: E731
        rows.append(f'<tr class="{status.lower()}"><td class="key">{_e(r.get("module"))}</td><td class="key">'
                    f'{_e(r.get("paddle"))}</td><td>{_e(r.get("type"))}</td><td>{shape(r.get("in_shape"))}</td>'
                    f'<td>{shape(r.get("out_shape"))}</td><td class="num">{fmt(r.get("in_diff"))}</td>'
                    f'<td class="num">{fmt(r.get("out_grad_diff") if grad else r.get("out_diff"))}</td>'
                    f'<td>{_e(status)}</td></tr>')
    head = ["module", "paddle", "type", "in shape", "out shape", "in |d|", "out grad |d|" if grad else "out |d|", "status"]
    return f'<h3>Modules around it{" (backward order)" if grad else ""}</h3>' + _table(head, rows, "around")


def _divergence(report: dict) -> str:
    div = report.get("first_divergence")
    if not div:
        return "<h2>First divergence</h2><p>none: every check that ran is aligned</p>" if report.get("aligned") \
            else "<h2>First divergence</h2><p>not localized</p>"
    parts = [f'<h2>First divergence</h2><p id="divergence">{_e(summary.divergence_line(div))}</p>']
    if div.get("path"):
        parts.append(f'<div class="tree">{_tree(div["path"])}</div>')
    if div.get("around"):
        parts.append(_around(div))
    return "".join(parts)


def _curves(found: list) -> str:
    if not found:
        return ""
    return "<h2>Curves</h2>" + "".join(f"<h3>{_e(c.title)}</h3>{svg.chart(c)}" for c in found)


def _key_rows(check: dict) -> list:
    rows = []
    for k in check["keys"]:
        why = (f"PASS ({k['rule']}: {k.get('note', '')})" if k.get("rule") else "PASS") if k["passed"] \
            else f"FAIL {k.get('reason', '')}"
        shape = "x".join(map(str, k["shape"])) if k.get("shape") else ("scalar" if k.get("shape") == [] else "-")
        rows.append(f'<tr class="keyrow" data-key="{_e(k["key"])}" data-passed="{int(bool(k["passed"]))}">'
                    f'<td class="key">{_e(k["key"])}</td><td>{shape}</td>'
                    + "".join(f'<td class="num">{fmt(k.get(f))}</td>' for f in ("mean_abs", "max_abs", "max_rel"))
                    + f'<td>{_e(summary.limit_text(k))}</td><td class="{"pass" if k["passed"] else "fail"}">'
                    f'{_e(why)}</td></tr>')
    return rows


def _keys(report: dict) -> str:
    parts = ['<h2>Keys</h2><div class="filter"><input id="q" type="search" placeholder="filter keys, e.g. param:" '
             'size="30"> <label><input id="failing" type="checkbox"> failing only</label> '
             '<span id="shown" class="muted"></span></div>']
    head = ["key", "shape", "mean |d|", "max |d|", "max rel", "limit", "verdict"]
    for check in report["checks"]:
        notes = "".join(f"<li>{_e(n)}</li>" for n in check.get("notes", []))
        parts.append(f'<details class="keys" data-check="{_e(check["name"])}"{"" if check["passed"] else " open"}>'
                     f'<summary>{_e(check["name"])}: {_e(check.get("reason", "aligned"))}</summary>'
                     f'{_table(head, _key_rows(check))}{f"<ul>{notes}</ul>" if notes else ""}</details>')
    return "".join(parts)


def _facts(report: dict) -> str:
    env = dict(report.get("environment") or {})
    devices = env.pop("devices", {}) or {}
    threads = env.pop("cpu_threads", None)
    rows = [f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in env.items()]
    if threads:
        shared = threads.get("up_to")
        rows.append(f"<tr><td>cpu threads</td><td>{_e(threads.get('per_worker'))} per worker"
                    f"{f', up to {_e(shared)} while the other has nothing to do' if shared else ' (fixed)'}</td></tr>")
    rows += [f"<tr><td>device ({_e(k)})</td><td>{_e(v)}</td></tr>" for k, v in devices.items()]
    timing = report.get("timing") or {}
    rows += [f"<tr><td>{_e(k)}</td><td>{_e(v)} s</td></tr>" for k, v in timing.items()]
    notes = "".join(f"<li>{_e(n)}</li>" for n in report.get("notes", []))
    warned = "".join(f"<li>{_e(n)}</li>" for n in report.get("warnings", []))
    return (f'{f"<h2>Notes</h2><ul>{notes}</ul>" if notes else ""}'
            f'{f"<h2>Warnings raised in the workers</h2><ul>{warned}</ul>" if warned else ""}<h2>Environment and timing</h2>'
            + _table(["", ""], rows, "facts"))


def build(report: dict, found: list, live: str | None = None) -> str:
    """The page. live: a run still going (a training run's report of its curves so far): this banner
    instead of the verdict, and the browser reloads the page every LIVE_RELOAD_S."""
    ok = bool(report.get("aligned"))
    verdict = (f'<div id="verdict" class="verdict live">{_e(live)}</div>' if live else
               f'<div id="verdict" class="verdict {"ok" if ok else "bad"}">{_e(summary.headline(report))}</div>')
    body = (f'<h1>reprod-harness: {_e(report["name"])}</h1>{verdict}'
            + _checks(report) + _divergence(report) + _curves(found) + _keys(report) + _facts(report))
    title = "in progress" if live else "ALIGNED" if ok else "MISALIGNED"
    reload = f'<meta http-equiv="refresh" content="{LIVE_RELOAD_S}">' if live else ""
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">{reload}<title>reprod-harness: '
            f'{_e(report["name"])} {title}</title><style>{STYLE}</style></head><body>{body}'
            f"<script>{SCRIPT}</script></body></html>\n")


def write_html(out_dir: Path, report: dict) -> Path:
    """report.html beside the run's artifacts, its curves read back from them; written atomically."""
    path = Path(out_dir) / "report.html"
    atomic_write(path, build(report, curves.curves(out_dir, report)).encode())
    return path
