"""Square weights' layout decided by measurement (harness/mapping/layout.py), pure: the plan says
which module pairs to measure and what each candidate loads; the workers' replies decide."""

import numpy as np
import pytest

from conftest import PAIRS, check, cli, report
from harness.mapping import layout
from harness.mapping.weights import plan


def mod(name, type_, params=None, cls=""):
    params = params or {}
    return {"name": name, "type": type_, "class": cls, "params": params, "buffers": {},
            "ids": {k: f"{name}.{k}" for k in params}, "dropout_site": None}


def traced(t_calls, p_calls):
    return {"torch": {"calls": t_calls, "error": None}, "paddle": {"calls": p_calls, "error": None}}


TORCH = [mod("", "Net"), mod("a", "Linear", {"weight": [8, 8], "bias": [8]}), mod("b", "Linear", {"weight": [8, 8]}),
         mod("head", "Linear", {"weight": [3, 8]})]
PADDLE = [mod("", "Port"), mod("a", "Linear", {"weight": [8, 8], "bias": [8]}, "paddle.compat.nn.Linear"),
          mod("b", "Linear", {"weight": [8, 8]}, "paddle.nn.layer.common.Linear"), mod("head", "Head", {"weight": [8, 3]})]
CALLS = traced(["", "a", "b", "head"], ["", "a", "b", "head"])


def entry(pl, name):
    return next(e for e in pl.entries if e.torch_name == name)


def test_only_called_pairs_with_square_weights_are_measured_with_both_layouts_as_candidates():
    pl = plan(TORCH, PADDLE, traces=CALLS)
    todo = layout.measurements(pl)
    assert [(m.torch, m.paddle) for m in todo] == [("a", "a"), ("b", "b")]  # head's shape decides
    a = todo[0]
    assert a.probed == ["a.bias", "a.weight"]
    assert a.candidates() == [{"weight": ("a.weight", [8, 8], None, False), "bias": ("a.bias", [8], None, False)},
                              {"weight": ("a.weight", [8, 8], None, True), "bias": ("a.bias", [8], None, False)}]
    assert entry(pl, "head.weight").layout == "shape" and entry(pl, "head.weight").transpose


def test_the_one_layout_that_reproduces_torch_wins_over_the_type_rule():
    pl = plan(TORCH, PADDLE, traces=CALLS)
    todo = layout.measurements(pl)
    layout.settle(pl, todo, {"a": {"errors": [1e-7, 1.3]}, "b": {"errors": [0.9, 2e-7]}})
    a, b = entry(pl, "a.weight"), entry(pl, "b.weight")
    assert not a.transpose and a.layout == "measured (as is reproduces torch's output (1.0e-07), transposed does not (1.3))"
    assert b.transpose and b.layout.startswith("measured (transposed reproduces")
    w = np.arange(64, dtype=np.float32).reshape(8, 8)
    state = {"a.weight": w, "a.bias": np.zeros(8, np.float32), "b.weight": w, "head.weight": np.zeros((3, 8), np.float32)}
    out = pl.to_paddle(state)
    np.testing.assert_array_equal(out["a.weight"], w)
    np.testing.assert_array_equal(np.asarray(out["b.weight"]), w.T)
    assert "layout of 2-D tensors by: measured 2, shape 1" in pl.table()


@pytest.mark.parametrize("reply, why", [
    ({"errors": [0.4, 0.9]}, "no layout reproduces torch's output, the closest is off by 0.4: the module itself differs"),
    ({"errors": [1e-7, 1e-7]}, "every layout reproduces torch's output"),
    ({"error": "TypeError: forward() got an unexpected keyword argument 'mask'"}, "not measured: TypeError"),
])
def test_when_measurement_cannot_tell_the_type_rule_decides_and_says_why(reply, why):
    pl = plan(TORCH, PADDLE, traces=CALLS)
    layout.settle(pl, layout.measurements(pl), {"a": reply, "b": reply})
    a, b = entry(pl, "a.weight"), entry(pl, "b.weight")
    assert not a.transpose  # paddle.compat.nn.Linear keeps torch's layout
    assert b.transpose  # paddle.nn.Linear is [in, out]
    assert a.layout.startswith(f"type rule ({why}")


def test_a_module_one_side_never_calls_is_laid_out_by_type_rule_and_says_so():
    pl = plan(TORCH, PADDLE, traces=traced(["", "a", "head"], ["", "a", "head"]))
    assert [m.torch for m in layout.measurements(pl)] == ["a"]
    assert entry(pl, "b.weight").layout == "type rule (the torch forward never calls 'b')"
    no_trace = plan(TORCH, PADDLE)
    assert layout.measurements(no_trace) == []
    assert entry(no_trace, "a.weight").layout == "type rule (no traced torch forward)"


def test_several_square_tensors_of_one_module_are_measured_together():
    t = [mod("", "Net"), mod("cell", "Cell", {"w1": [4, 4], "w2": [4, 4]})]
    p = [mod("", "Port"), mod("cell", "Cell", {"w1": [4, 4], "w2": [4, 4]})]
    pl = plan(t, p, traces=traced(["", "cell"], ["", "cell"]))
    (m,) = layout.measurements(pl)
    assert m.layouts() == [(False, False), (False, True), (True, False), (True, True)]
    layout.settle(pl, [m], {"cell": {"errors": [0.5, 0.7, 1e-8, 0.6]}})
    assert entry(pl, "cell.w1").transpose and not entry(pl, "cell.w2").transpose
    assert entry(pl, "cell.w2").layout == "measured (as is reproduces torch's output (1.0e-08), transposed does not (0.6))"


@pytest.mark.e2e
def test_square_weights_in_four_layouts_align_without_a_converter(tmp_path):
    proc = cli("run", PAIRS / "square_layouts" / "pair.toml", "--out", tmp_path / "o", "--checks", "forward,backward")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rep = report(tmp_path / "o")
    assert rep["aligned"] and any(k["key"].startswith("grad:c.") for k in check(rep, "backward")["keys"])
    how = {p["torch"]: (p["transform"], p["layout"]) for p in rep["weight_map"]["pairs"]}
    assert how["a.weight"][0] == "copy" and how["a.weight"][1].startswith("measured (as is")  # paddle.compat.nn.Linear
    assert how["b.weight"][0] == "transpose" and how["b.weight"][1].startswith("measured (transposed")
    assert how["c.weight"][0] == "copy" and how["c.weight"][1].startswith("measured (as is")  # zeros in torch
    assert how["lm_head.weight"] == ("copy", "shape")


def test_a_fused_attention_is_laid_out_by_type_rule_without_a_wasted_forward():
    t = [mod("", "Net"), mod("attn", "MultiheadAttention", {"in_proj_weight": [12, 4], "in_proj_bias": [12]}),
         mod("attn.out_proj", "NonDynamicallyQuantizableLinear", {"weight": [4, 4], "bias": [4]})]
    p = [mod("", "Port"), mod("attn", "MultiHeadAttention")] + [
        mod(f"attn.{c}", "Linear", {"weight": [4, 4], "bias": [4]}) for c in ("q_proj", "k_proj", "v_proj", "out_proj")]
    pl = plan(t, p, traces=traced(["", "attn"], ["", "attn", "attn.q_proj", "attn.k_proj", "attn.v_proj",
                                                 "attn.out_proj"]))
    assert layout.measurements(pl) == []
    q = next(e for e in pl.entries if e.paddle_name == "attn.q_proj.weight")
    assert q.transpose and q.layout == "type rule (torch's fused attention and paddle's are called differently)"


LAYERS = '''
import numpy as np, torch


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(4, 4)
        self.b = torch.nn.Linear(4, 4)
        self.head = torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.b(torch.tanh(self.a(x))))


class Pair(torch.nn.Module):  # answers with two tensors where torch's Linear gives one
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(4, 4))

    def forward(self, x):
        return x @ self.weight.T, x


def build_torch(): return Net()
def build_paddle(): raise AssertionError("never built: both ops run on the torch side here")
def make_batch(rng, step): return {"x": rng.standard_normal((2, 4), dtype=np.float32), "y": rng.integers(0, 3, 2)}
'''


@pytest.mark.e2e
def test_torch_records_and_replays_its_own_modules_in_process(make_pair, tmp_path):
    """backends/layout.py over the torch primitives, both ops in one process: the as-is layout
    reproduces, the recording forward stops after the last module asked for, and a module that
    answers with other tensors is named rather than judged."""
    from backends.torch.runner import Runner  # the framework only in this test, not at collection
    from harness.config import parse
    from harness.pair.batches import BatchSource

    cfg = parse.load(make_pair(LAYERS, '[data]\ninputs = ["x"]\nlabels = ["y"]\n'))
    runner = Runner({"threads": 1, "device": "cpu", "shm_dir": str(tmp_path)})
    runner.setup(cfg.to_wire())
    called = []
    runner.model.head.register_forward_pre_hook(lambda m, args: called.append("head"))
    recorded = runner.record_probes(BatchSource(cfg).batch(0), {"a": ["a.weight", "a.bias"], "b": ["b.weight"]})
    assert not called  # b's input was the last one needed
    asks = {"a": {**recorded["a"], "candidates": [{"weight": ("a.weight", [4, 4], None, t),
                                                   "bias": ("a.bias", [4], None, False)} for t in (False, True)]}}
    errors = runner.replay_probes(asks)["a"]["errors"]
    assert errors[0] < 1e-6 < 0.1 < errors[1]
    runner.model.b = runner.pair.Pair()
    reply = runner.replay_probes({"b": {**recorded["b"], "candidates": [{"weight": ("b.weight", [4, 4], None, False)}]}})
    assert reply["b"]["error"] == "its output's tensors are [2, 4], [2, 4], torch's [2, 4]"
