"""The console reads answer first at 80 columns: verdict, a row per check, the first divergence,
the first failing check's keys, later failures folded; names of keys never broken; -v every key;
-q the verdict line and the artifacts path. Rendered from a real run's report.json
(tests/data/transposed) and from reports built here for the edge cases."""

import copy
import json
from pathlib import Path

from rich.console import Console

from harness.report import summary
from harness.report.console import as_text, print_report

DATA = Path(__file__).resolve().parent / "data" / "transposed"
REPORT = json.loads((DATA / "report.json").read_text())


def _render(report, width=80, **kwargs) -> list:
    console = Console(width=width, record=True, color_system=None, file=open("/dev/null", "w"))
    print_report(console, report, "/tmp/artifacts/transposed", **kwargs)
    return console.export_text().rstrip("\n").splitlines()


def _index(lines, needle) -> int:
    return next(i for i, line in enumerate(lines) if needle in line)


def _cell_lines(lines, at, start) -> list:
    """The lines of a wrapped table cell: from row `at`, where `start` begins, down the same column."""
    col = lines[at].index(start)
    cell = [lines[at][col:].split()[0]]
    for line in lines[at + 1:]:
        if line[:col].strip() or not line[col:].strip() or line[col] == " ":
            break
        cell.append(line[col:].split()[0])
    return cell


def test_a_failing_run_reads_verdict_where_what_in_40_lines():
    lines = _render(REPORT)
    assert len(lines) <= 40, "\n".join(lines)
    assert lines[0].startswith("MISALIGNED  transposed: 5 of 6 checks fail, first forward")
    table, where = _index(lines, "worst |d| vs limit"), _index(lines, "first divergence: forward")
    what, folded = _index(lines, "forward: 1 of 1 keys differ"), _index(lines, "also failing")
    assert table < where < what < folded
    # later checks are one line each with their counts, not tables of their keys
    assert any(line.split() == ["backward", "23", "of", "23", "keys", "differ"] for line in lines[folded:])
    assert not any("param:conv1.weight" in line for line in lines)
    # a key and its reason share a line when they fit
    assert lines[what + 1] == "out  8x16  mean |d| 0.163 > 1e-06; max |d| 0.407 at [0, 4] > 0.0001"
    assert lines[-1] == "MISALIGNED  artifacts: /tmp/artifacts/transposed"
    assert max(len(line) for line in lines) <= 80


def test_thresholds_are_named():
    """The train row's BatchNorm buffer is absolute, its losses relative; the float32 floor says so."""
    lines = _render(REPORT)
    train = next(line for line in lines if line.startswith("train "))
    assert "buffer:bn2.running_mean" in train and "mean 0.00651 > 1e-06" in train and "rel" not in train
    loss_row = lines[_index(lines, "loss ") : _index(lines, "loss ") + 2]
    assert "2.58e-06" in loss_row[0] and "(8-ulp floor)" in " ".join(loss_row)
    keys = {k["key"]: k for c in REPORT["checks"] for k in c["keys"]}
    assert summary.limit_text(keys["loss"]) == "mean 2.58e-06*, max 0.0001 (*8-ulp floor)"
    assert summary.limit_text(keys["loss_0"]) == "rtol 0.0015"
    assert summary.limit_text(keys["buffer:bn1.running_mean"]) == "mean 1e-06, max 0.0001"


def _long_keys_report(n: int) -> dict:
    names = [f"param:encoder.layers.{i}.self_attention.output_projection.weight" for i in range(n)]
    keys = [{"key": k, "passed": i % 2 == 1, "shape": [768, 768], "count": 589824, "mean_abs": 3e-3, "max_abs": 0.5,
             "max_rel": 0.1, "threshold": 1e-6, "max_threshold": 1e-4,
             **({} if i % 2 else {"reason": "mean |d| 0.003 > 1e-06; max |d| 0.5 at [3, 7] > 0.0001"})}
            for i, k in enumerate(names)]
    report = copy.deepcopy(REPORT)
    report["checks"] = [{"name": "backward", "passed": False, "reason": f"{(n + 1) // 2} of {n} keys differ", "keys": keys}]
    report["first_divergence"] = None
    return report


def test_key_names_never_break_mid_word():
    """62-character keys at 80 columns: each failing key whole on its line, its reason below it in
    one line (not squeezed into a column), and the summary keeps every column readable."""
    report = _long_keys_report(6)
    lines = _render(report)
    for k in report["checks"][0]["keys"]:
        if not k["passed"]:
            at = _index(lines, k["key"])
            assert lines[at + 1].strip() == k["reason"], lines
    at = next(i for i, line in enumerate(lines) if line.startswith("backward "))
    assert lines[at].split()[:3] == ["backward", "6/6", "param:encoder.layers.0."] and lines[at].rstrip().endswith("FAIL")
    # the worst key wraps after its dots, in its own column: never cut
    assert _cell_lines(lines, at, "param:") == ["param:encoder.layers.0.", "self_attention.", "output_projection.weight"]
    assert len(lines) <= 22 and max(len(line) for line in lines) <= 80 and not any("…" in line for line in lines)


# The names of an HF BERT against PaddleNLP's, as a misaligned run reports them.
LAYER = "bert.encoder.layer.0."
AROUND = [("attention.self.query", "self_attn.q_proj", "agrees"), ("attention.self.key", "self_attn.k_proj", "agrees"),
          ("attention.self.value", "self_attn.v_proj", "agrees"),
          ("attention.output.dense", "self_attn.out_proj", "HERE"),
          ("attention.output.LayerNorm", "norm1", "DIFFERS"), ("intermediate.dense", "linear1", "DIFFERS")]


def _hf_report() -> dict:
    report = copy.deepcopy(REPORT)
    key = {"shape": [64], "count": 64, "mean_abs": 3e-3, "max_abs": 0.5, "max_rel": 0.1, "threshold": 1e-6,
           "max_threshold": 1e-4}
    report["checks"] = [
        {"name": "forward", "passed": True, "keys": [{**key, "key": "out", "mean_abs": 1e-9, "max_abs": 1e-8,
                                                      "passed": True}]},
        {"name": "backward", "passed": False, "reason": "1 of 3 keys differ", "keys": [
            {**key, "key": f"param:{LAYER}attention.output.LayerNorm.weight", "passed": False,
             "reason": "mean |d| 0.003 > 1e-06"},
            {**key, "key": f"param:{LAYER}attention.self.key.bias", "passed": True, "rule": "unconstrained"},
            {**key, "key": f"grad:{LAYER}intermediate.dense.bias", "passed": True, "mean_abs": 1e-9}]}]
    report["first_divergence"] = {
        "check": "backward", "where": "inside", "layer": f"{LAYER}attention.output", "step": 0, "detail": "...",
        "around": [{"module": LAYER + t, "paddle": "bert.encoder.layers.0." + p, "type": "Linear", "in_shape": [8, 32, 64],
                    "out_shape": [8, 32, 64], "in_diff": 1e-17, "out_diff": 3e-5, "status": status}
                   for t, p, status in AROUND]}
    return report


def test_hf_names_at_80_columns_wrap_and_every_verdict_cell_stays():
    """Once: worst keys cut to `…ion.output.LayerNorm.weight`, the verdict cut to `FAIL 1 by`, the
    module table's status column dropped. Now names wrap (after their dots), relative to the layer
    every row shares, and the verdict, the rule count, the diffs and the status are whole."""
    lines = _render(_hf_report())
    assert max(len(line) for line in lines) <= 80 and not any("…" in line for line in lines), "\n".join(lines)
    at = next(i for i, line in enumerate(lines) if line.startswith("backward "))
    assert lines[at].rstrip().endswith("FAIL") and lines[at + 1].strip().endswith("1 by rule")
    assert "".join(_cell_lines(lines, at, "param:")) == f"param:{LAYER}attention.output.LayerNorm.weight"
    title = _index(lines, "modules around it")
    assert "in bert.encoder.layer.0" in " ".join(lines[title:title + 2])
    table = lines[title:]
    for torch_name, paddle_name, status in AROUND:
        row = next(line for line in table if line.split() and line.split()[0] == torch_name)
        assert row.split()[-3:] == ["1e-17", "3e-05", status], row
        assert any(line.strip() == f"→ {paddle_name}" for line in table)
    wide = _render(_hf_report(), width=160)  # room for everything: a column each, one line a row
    row = next(line for line in wide if line.startswith("attention.output.dense "))
    assert row.split() == ["attention.output.dense", "self_attn.out_proj", "Linear", "8x32x64", "8x32x64", "1e-17",
                           "3e-05", "HERE"]


def test_verbose_shows_every_key_without_a_cut_off():
    report = _long_keys_report(40)
    wide = "\n".join(_render(report, width=200, verbose=True))
    assert all(k["key"] in wide for k in report["checks"][0]["keys"])
    default = "\n".join(_render(report, width=200))
    shown = [k["key"] for k in report["checks"][0]["keys"] if k["key"] in default]
    assert len(shown) == 6 and "... 14 more failing keys: -v or report.html" in default


def test_quiet_is_the_verdict_line_and_the_artifacts_path():
    assert _render(REPORT, quiet=True) == [
        "MISALIGNED  transposed: 5 of 6 checks fail, first forward (1 of 1 keys differ)",
        "artifacts: /tmp/artifacts/transposed"]


def test_markup_in_names_is_printed_literally():
    report = _long_keys_report(2)
    report["checks"][0]["keys"][0]["key"] = "out.[bold]x[/]"
    assert "out.[bold]x[/]" in as_text(report, width=120)


def test_a_key_without_statistics_shows_its_reason_as_the_worst():
    report = copy.deepcopy(REPORT)
    report["checks"] = [{"name": "forward", "passed": False, "reason": "1 of 2 keys differ", "keys": [
        {"key": "out.0", "passed": True, "shape": [2], "count": 2, "mean_abs": 0.0, "max_abs": 0.0,
         "threshold": 1e-6, "max_threshold": 1e-4},
        {"key": "out.1", "passed": False, "shape": [2, 3], "shape_other": [3, 2], "count": 0,
         "threshold": 1e-6, "max_threshold": 1e-4, "reason": "shape (2, 3) (torch) vs (3, 2) (paddle)"}]}]
    row = next(line for line in _render(report, width=120) if line.startswith("forward "))
    assert row.split()[:3] == ["forward", "1/2", "out.1"] and "shape (2, 3) (torch) vs (3, 2) (paddle)   FAIL" in row


def test_worker_warnings_stay_in_report_json_unless_verbose():
    """A library's warning (setuptools replacing distutils) is no note: an aligned run says nothing of
    it, a misaligned one counts it, -v shows it."""
    warning = "paddle worker: UserWarning: Setuptools is replacing distutils. (_distutils_hack/__init__.py:30)"
    aligned = copy.deepcopy(REPORT)
    aligned.update(aligned=True, first_divergence=None, warnings=[warning], notes=[])
    for c in aligned["checks"]:
        c.update(passed=True, keys=[k for k in c["keys"] if k["passed"]])
        c.pop("reason", None)
    assert not any("arning" in line or "note" in line for line in _render(aligned))
    assert any("Setuptools is replacing distutils" in line for line in _render(aligned, width=200, verbose=True))
    misaligned = dict(copy.deepcopy(REPORT), warnings=[warning])
    assert "1 warning(s) raised in the workers: -v or report.json" in _render(misaligned)
