"""The torch -> paddle weight planner (pure numpy), and real pairs that depend on it."""

import numpy as np
import pytest

from conftest import PAIRS, ROOT, check, cli, report
from harness.errors import UsageError
from harness.weights import kind, plan


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


def test_fused_attention_projection_splits_and_round_trips():
    t = [mod("att", "MultiheadAttention", {"in_proj_weight": [12, 4], "in_proj_bias": [12]}),
         mod("att.out_proj", "NonDynamicallyQuantizableLinear", {"weight": [4, 4], "bias": [4]})]
    p = [mod("att", "MultiHeadAttention")] + [
        mod(f"att.{c}", "Linear", {"weight": [4, 4], "bias": [4]}) for c in ("q_proj", "k_proj", "v_proj", "out_proj")]
    pl = plan(t, p)
    rng = np.random.default_rng(0)
    state = {e.torch_name: rng.standard_normal(e.torch_shape).astype(np.float32) for e in pl.entries}
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
    with pytest.raises(UsageError, match=r"nearest paddle 'fc': paddle has bias \[2\] that torch lacks"):
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
def test_a_correct_user_mapping_passes_backward_without_comparing_unknown_layouts(make_pair, tmp_path):
    toml = make_pair(CORRECT_USER_MAPPING, '[data]\ninputs = ["x"]\n', name="usermap")
    proc = cli("run", toml, "--out", tmp_path / "o", "--checks", "forward,backward")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    backward = check(report(tmp_path / "o"), "backward")
    assert all(k["key"].startswith("loss_") for k in backward["keys"])
    assert any("not compared" in n for n in backward["notes"])
