"""The torch -> paddle weight planner (pure numpy), and real pairs that depend on it."""

import re

import numpy as np
import pytest

from conftest import PAIRS, ROOT, check, cli, report
from harness.errors import UsageError
from harness.mapping.weights import kind, plan


def mod(name, type_, params=None, buffers=None, ids=None):
    params = params or {}
    return {"name": name, "type": type_, "params": params, "buffers": buffers or {},
            "ids": ids or {k: f"{name}.{k}" for k in {**params, **(buffers or {})}}}


def test_kinds_unify_class_names():
    assert kind("Conv2d") == kind("Conv2D") == "conv2d"
    assert kind("ConvTranspose2d") == kind("Conv2DTranspose") == "convtranspose2d"
    assert kind("BatchNorm2d") == kind("BatchNorm2D") == kind("BatchNorm1D") == "batchnorm"
    assert kind("MultiheadAttention") == kind("MultiHeadAttention") == "mha"


def test_square_linear_weight_is_transposed_and_values_follow():
    t = [mod("fc", "Linear", {"weight": [4, 4], "bias": [4]})]
    p = [mod("fc", "Linear", {"weight": [4, 4], "bias": [4]})]
    pl = plan(t, p)
    w = np.arange(16, dtype=np.float32).reshape(4, 4)
    out = pl.to_paddle({"fc.weight": w, "fc.bias": np.zeros(4, np.float32)})
    np.testing.assert_array_equal(out["fc.weight"], w.T)
    assert "transpose" in pl.table()


def test_names_differ_shapes_decide_and_a_missing_module_is_named():
    t = [mod("a", "Linear", {"weight": [3, 2]}), mod("b", "Linear", {"weight": [5, 3]})]
    p = [mod("x", "Linear", {"weight": [2, 3]}), mod("y", "Linear", {"weight": [3, 5]})]
    assert [(e.torch_name, e.paddle_name) for e in plan(t, p).entries] == [("a.weight", "x.weight"), ("b.weight", "y.weight")]
    with pytest.raises(UsageError, match=r"torch 'b' \(Linear: weight \[5, 3\]\) has no paddle counterpart"):
        plan(t, p[:1])
    swapped = [p[1], p[0]]  # defined in another order: the shapes say which is which
    assert sorted((e.torch_name, e.paddle_name) for e in plan(t, swapped).entries) == [("a.weight", "x.weight"),
                                                                                         ("b.weight", "y.weight")]


def test_batchnorm_renames_and_drops_counter():
    t = [mod("bn", "BatchNorm2d", {"weight": [3], "bias": [3]},
             {"running_mean": [3], "running_var": [3], "num_batches_tracked": []})]
    p = [mod("bn", "BatchNorm2D", {"weight": [3], "bias": [3], "_mean": [3], "_variance": [3]})]
    pl = plan(t, p)
    assert {e.paddle_name for e in pl.entries} == {"bn.weight", "bn.bias", "bn._mean", "bn._variance"}
    assert pl.dropped == [("bn.num_batches_tracked", "no paddle counterpart")]


def fused_attention() -> tuple:
    """torch's MultiheadAttention vs paddle's MultiHeadAttention: the plan, and a torch state."""
    t = [mod("att", "MultiheadAttention", {"in_proj_weight": [12, 4], "in_proj_bias": [12]}),
         mod("att.out_proj", "NonDynamicallyQuantizableLinear", {"weight": [4, 4], "bias": [4]})]
    p = [mod("att", "MultiHeadAttention")] + [
        mod(f"att.{c}", "Linear", {"weight": [4, 4], "bias": [4]}) for c in ("q_proj", "k_proj", "v_proj", "out_proj")]
    pl = plan(t, p)
    rng = np.random.default_rng(0)
    return pl, {e.torch_name: rng.standard_normal(e.torch_shape).astype(np.float32) for e in pl.entries}


def test_fused_attention_projection_splits_and_round_trips():
    pl, state = fused_attention()
    converted = pl.to_paddle(state)
    np.testing.assert_array_equal(converted["att.k_proj.weight"], state["att.in_proj_weight"][4:8].T)
    np.testing.assert_array_equal(converted["att.v_proj.bias"], state["att.in_proj_bias"][8:])
    back = pl.to_torch(converted)
    assert set(back) == set(state)
    for k in state:
        np.testing.assert_array_equal(back[k], state[k])


def test_every_paddle_tensor_must_be_filled():
    t = [mod("fc", "Linear", {"weight": [2, 3]})]
    p = [mod("fc", "Linear", {"weight": [3, 2], "bias": [2]})]
    with pytest.raises(UsageError, match=r"^weight mapping: paddle 'fc.bias' \[2\] is filled by no torch tensor: torch "
                                         r"'fc' \(Linear: weight \[2, 3\]\) has the rest of paddle 'fc' but no bias"):
        plan(t, p)


def test_aliased_paddle_tensors_are_filled_from_one_source():
    t = [mod("rnn", "GRU", {"weight_ih_l0": [6, 2]})]
    p = [mod("rnn", "GRU", {"weight_ih_l0": [6, 2]}, ids={"weight_ih_l0": "shared"}),
         mod("rnn.0.cell", "GRUCell", {"weight_ih": [6, 2]}, ids={"weight_ih": "shared"})]
    pl = plan(t, p)
    assert {e.paddle_name: e.alias_of for e in pl.entries} == {"rnn.weight_ih_l0": None, "rnn.0.cell.weight_ih": "rnn.weight_ih_l0"}


@pytest.mark.parametrize("toml", [PAIRS / "layers" / "pair.toml", ROOT / "examples" / "transformer_encoder" / "pair.toml",
                                  PAIRS / "decoder" / "pair.toml"],
                         ids=["layers_by_order", "transformer_encoder", "transformer_decoder"])
@pytest.mark.e2e
def test_real_pairs_align_through_the_automatic_mapping(toml, tmp_path):
    proc = cli("run", toml, "--out", tmp_path / "o", "--checks", "forward,backward")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert report(tmp_path / "o")["aligned"]


UNTRANSPOSED = '''
import numpy as np
from backends.zoo.mlp.pair import build_paddle, build_torch, make_batch  # noqa: F401

def torch_to_paddle(state):
    out = {k: (v.T if k.endswith("weight") and k != "fc2.weight" else v) for k, v in state.items()}
    return out  # fc2 is 64 x 64: it loads untransposed without complaint
'''


@pytest.mark.e2e
def test_user_mapping_that_forgets_a_square_transpose_fails_forward(make_pair, tmp_path):
    toml = make_pair(UNTRANSPOSED, '[data]\ninputs = ["x"]\n', name="untransposed")
    proc = cli("run", toml, "--out", tmp_path / "o", "--checks", "forward")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert not check(report(tmp_path / "o"), "forward")["passed"]
    assert "torch_to_paddle" in (tmp_path / "o" / "weight_map.txt").read_text()


CORRECT_USER_MAPPING = '''
from backends.zoo.mlp.pair import build_paddle, build_torch, make_batch  # noqa: F401

def torch_to_paddle(state):
    return {k: (v.T if k.endswith("weight") else v) for k, v in state.items()}
'''


@pytest.mark.e2e
def test_a_pair_with_its_own_converter_compares_parameters_and_gradients_identified_by_value(make_pair, tmp_path):
    toml = make_pair(CORRECT_USER_MAPPING, '[data]\ninputs = ["x"]\n', name="usermap")
    proc = cli("run", toml, "--out", tmp_path / "o", "--checks", "forward,backward")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rep = report(tmp_path / "o")
    compared = {k["key"] for k in check(rep, "backward")["keys"]}
    for name in ("fc1.weight", "fc2.weight", "fc2.bias", "head.weight"):  # fc2 is square: only its values tell
        assert f"param:{name}" in compared and f"grad:{name}" in compared
    assert not any("not compared" in n for n in check(rep, "backward")["notes"])
    assert {p["torch"]: p["transform"] for p in rep["weight_map"]["pairs"]}["fc2.weight"] == "transpose"
    assert rep["weight_map"]["custom"] == "torch_to_paddle"
    assert "identified by its values" in (tmp_path / "o" / "weight_map.txt").read_text()


CHANGING_USER_MAPPING = CORRECT_USER_MAPPING.replace(
    'return {k: (v.T if k.endswith("weight") else v) for k, v in state.items()}',
    'out = {k: (v.T if k.endswith("weight") else v) for k, v in state.items()}\n'
    '    out["fc1.bias"] = out["fc1.bias"] * 0.5  # the converter changes values: no tensor equals it\n'
    '    return out')


@pytest.mark.e2e
def test_a_tensor_the_converter_changed_is_left_out_by_name(make_pair, tmp_path):
    toml = make_pair(CHANGING_USER_MAPPING, '[data]\ninputs = ["x"]\n', name="changing")
    proc = cli("run", toml, "--out", tmp_path / "o", "--checks", "backward")
    backward = check(report(tmp_path / "o"), "backward")
    compared = {k["key"] for k in backward["keys"]}
    assert "param:fc1.weight" in compared and not any("fc1.bias" in k for k in compared), proc.stdout
    assert any("not compared, no paddle tensor identified by value: fc1.bias" in n for n in backward["notes"])
    assert "paddle 'fc1.bias' equals no torch tensor" in (tmp_path / "o" / "weight_map.txt").read_text()


REORDERED_PORT = '''
"""The port defines its layers in another order and under other names, moves a block, and
shares one Linear for two calls; every Linear is 8x8, so only the call order tells them apart."""
import numpy as np, paddle, torch


class Reference(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.block = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Tanh(), torch.nn.Linear(8, 8))
        self.mix = torch.nn.Linear(8, 8)
        self.head = torch.nn.Linear(8, 3)

    def forward(self, x):
        h = torch.relu(self.conv2(torch.relu(self.conv1(x)))).mean(dim=(2, 3))
        return self.head(self.mix(torch.tanh(self.mix(self.block(h)))))


class Port(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.shared = paddle.nn.Linear(8, 8)
        self.trunk = paddle.nn.Sequential(paddle.nn.Linear(8, 8), paddle.nn.Tanh(), paddle.nn.Linear(8, 8))
        self.second = paddle.nn.Conv2D(8, 8, 3, padding=1)
        self.first = paddle.nn.Conv2D(8, 8, 3, padding=1)
        self.head = paddle.nn.Linear(8, 3)

    def forward(self, x):
        h = paddle.nn.functional.relu(self.second(paddle.nn.functional.relu(self.first(x)))).mean(axis=[2, 3])
        return self.head(self.shared(paddle.tanh(self.shared(self.trunk(h)))))


def build_torch(): return Reference()
def build_paddle(): return Port()
def make_batch(rng, step):
    return {"x": rng.standard_normal((4, 8, 6, 6), dtype=np.float32), "label": rng.integers(0, 3, size=(4,))}
'''


@pytest.mark.e2e
def test_a_reordered_renamed_port_with_a_shared_block_aligns_by_call_order(make_pair, tmp_path):
    toml = make_pair(REORDERED_PORT, '[data]\ninputs = ["x"]\n', name="reordered")
    proc = cli("run", toml, "--out", tmp_path / "o", "--checks", "forward")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rep = report(tmp_path / "o")
    assert rep["aligned"]
    decided = {p["torch"]: (p["paddle"], p["decided_by"]) for p in rep["weight_map"]["pairs"]}
    assert decided["conv1.weight"] == ("first.weight", "call order")
    assert decided["block.0.weight"] == ("trunk.0.weight", "call order")
    assert decided["mix.weight"] == ("shared.weight", "call order")  # defined first in the port, called last
    assert decided["head.weight"] == ("head.weight", "same name")
    assert "decided by, per tensor: call order 10, same name 2" in (tmp_path / "o" / "weight_map.txt").read_text()


UNUSED_HEADS = '''
import numpy as np, paddle, torch


class Reference(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(6, 4)
        self.head_a = torch.nn.Linear(4, 4)  # neither head is called
        self.head_b = torch.nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(x)


class Port(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.fc = paddle.nn.Linear(6, 4)
        self.aux_1 = paddle.nn.Linear(4, 4)
        self.aux_2 = paddle.nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(x)


def build_torch(): return Reference()
def build_paddle(): return Port()
def make_batch(rng, step):
    return {"x": rng.standard_normal((4, 6), dtype=np.float32), "label": rng.integers(0, 4, size=(4,))}
'''


@pytest.mark.e2e
def test_two_unused_same_shape_heads_exit_2_naming_both_then_mapping_settles_it(make_pair, tmp_path):
    toml = make_pair(UNUSED_HEADS, '[data]\ninputs = ["x"]\n', name="heads")
    proc = cli("run", toml, "--out", tmp_path / "o", "--checks", "forward")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    for name in ("'head_a' (never called)", "'head_b' (never called)", "'aux_1' (never called)", "'aux_2' (never called)"):
        assert name in proc.stderr
    assert '"head_a" = "aux_1"' in proc.stderr and "Traceback" not in proc.stderr

    toml.write_text(toml.read_text() + '[mapping]\n"head_a" = "aux_2"\n')
    proc = cli("run", toml, "--out", tmp_path / "m", "--checks", "forward")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    table = (tmp_path / "m" / "weight_map.txt").read_text()
    assert 'head_a.weight  [4, 4]       aux_2.weight' in table and '[mapping] "head_a" = "aux_2"' in table
    assert "head_b.bias" in table and "type order (the only one of its shapes; never called)" in table

    toml.write_text(toml.read_text().replace('"head_a" = "aux_2"', '"head_c" = "aux_2"'))
    proc = cli("run", toml, "--out", tmp_path / "u", "--checks", "forward")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = toml.read_text().splitlines()
    line = next(i for i, text in enumerate(lines, 1) if text.startswith('"head_c"'))
    assert f"pair.toml:{line}: mapping.\"head_c\"" in proc.stderr
    assert re.search(r"mapping.\"head_c\": the torch model has no module 'head_c' \(did you mean 'head_[ab]'\?\)$",
                     proc.stderr.strip())


# ---------------------------------------------------------------------------- the pair's own converter, identified by value
def test_values_identify_each_paddle_tensor_and_ambiguity_is_settled_by_name_or_left_out():
    from harness.mapping.identify import identify

    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 4)).astype(np.float32)
    torch_state = {"fc.weight": w, "fc.bias": np.zeros(4, np.float32), "out.bias": np.zeros(4, np.float32),
                   "gate.weight": np.zeros((4, 4), np.float32), "emb.weight": rng.standard_normal((6, 4))}
    paddle_state = {"lin.weight": w.T.copy(), "fc.bias": np.zeros(4, np.float32), "proj.bias": np.zeros(4, np.float32),
                    "gate.weight": np.zeros((4, 4), np.float32), "emb.weight": torch_state["emb.weight"] * 2}
    ident = identify(torch_state, paddle_state)
    found = {e.paddle_name: (e.torch_name, e.transform) for e in ident.entries}
    assert found == {"lin.weight": ("fc.weight", "transpose"), "fc.bias": ("fc.bias", "copy")}  # square: values tell
    why = dict(ident.dropped)
    assert set(why) == {"out.bias", "gate.weight", "emb.weight"}
    notes = " | ".join(ident.notes)
    assert "paddle 'proj.bias' left out: equals 2 torch tensors (fc.bias, out.bias)" in notes
    assert "paddle 'gate.weight' left out: equals 'gate.weight' both as is and transposed" in notes
    assert "paddle 'emb.weight' left out: equals no torch tensor, as is or transposed" in notes


def test_a_fused_projection_split_by_the_converter_is_identified_through_the_automatic_guess():
    from harness.mapping.identify import identify

    guess, state = fused_attention()
    converted = {k: np.asarray(v) for k, v in guess.to_paddle(state).items()}
    ident = identify(state, converted, guess=guess)
    assert not ident.dropped and len(ident.entries) == 8
    back = ident.paddle_to_torch_names(converted)
    np.testing.assert_array_equal(back["att.in_proj_weight"], state["att.in_proj_weight"])


def test_a_zero_split_that_other_zeros_equal_is_settled_by_the_automatic_guess():
    from harness.mapping.identify import identify

    guess, state = fused_attention()
    state["att.in_proj_bias"][:] = 0  # as torch initialises it, like the out_proj bias below
    state["att.out_proj.bias"][:] = 0
    converted = {k: np.asarray(v) for k, v in guess.to_paddle(state).items()}
    ident = identify(state, converted, guess=guess)
    assert not ident.dropped
    found = {e.paddle_name: (e.torch_name, e.part) for e in ident.entries}
    assert found["att.k_proj.bias"] == ("att.in_proj_bias", (1, 3)) and found["att.out_proj.bias"][0] == "att.out_proj.bias"
