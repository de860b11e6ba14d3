"""Module pairing for the weight plan (harness/mapping/pairing.py, harness/mapping/dropouts.py), pure: module
tables and call orders as the workers report them, written by hand or recorded from real pairs."""

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from harness.config import parse
from harness.errors import ConfigError, UsageError
from harness.mapping.weights import RenameError, plan

FIXTURES = Path(__file__).resolve().parent / "data" / "mapping"


def mod(name, type_, params=None, buffers=None, site=None):
    params = params or {}
    return {"name": name, "type": type_, "params": params, "buffers": buffers or {},
            "ids": {k: f"{name}.{k}" for k in {**params, **(buffers or {})}}, "dropout_site": site}


def conv(name, cin=8, cout=8):
    return mod(name, "Conv2d", {"weight": [cout, cin, 3, 3], "bias": [cout]})


def traced(t_calls, p_calls):
    return {"torch": {"calls": t_calls, "error": None}, "paddle": {"calls": p_calls, "error": None}}


def pairs(pl):
    return {e.torch_name: e.paddle_name for e in pl.entries}


def decided(pl):
    return {e.torch_name: e.decided_by for e in pl.entries}


# ---------------------------------------------------------------------------- the cases
def test_reordered_definitions_pair_by_call_order_not_definition_order():
    t = [mod("", "Net"), conv("conv1"), conv("conv2"), mod("head", "Linear", {"weight": [2, 8]})]
    p = [mod("", "Port"), conv("second"), conv("first"), mod("head", "Linear", {"weight": [8, 2]})]
    pl = plan(t, p, traces=traced(["", "conv1", "conv2", "head"], ["", "first", "second", "head"]))
    assert pairs(pl)["conv1.weight"] == "first.weight" and pairs(pl)["conv2.bias"] == "second.bias"
    assert decided(pl)["conv1.weight"] == "call order" and decided(pl)["head.weight"] == "same name"
    w = np.arange(8 * 8 * 9, dtype=np.float32).reshape(8, 8, 3, 3)
    state = {e.torch_name: np.zeros(e.torch_shape, np.float32) for e in pl.entries} | {"conv1.weight": w}
    np.testing.assert_array_equal(pl.to_paddle(state)["first.weight"], w)
    assert "call order (#1 of 2 of these shapes)" in pl.table()


def test_a_block_moved_and_renamed_pairs_by_call_order():
    t = [mod("", "Net"), mod("stem", "Conv2d", {"weight": [8, 3, 3, 3]}), mod("body", "Sequential"),
         conv("body.0"), mod("body.1", "BatchNorm2d", {"weight": [8], "bias": [8]},
                             {"running_mean": [8], "running_var": [8], "num_batches_tracked": []}), conv("body.2")]
    p = [mod("", "Port"), mod("trunk", "Sequential"), conv("trunk.a"),
         mod("trunk.n", "BatchNorm2D", {"weight": [8], "bias": [8], "_mean": [8], "_variance": [8]}),
         conv("trunk.b"), mod("entry", "Conv2D", {"weight": [8, 3, 3, 3]})]
    pl = plan(t, p, traces=traced(["", "stem", "body", "body.0", "body.1", "body.2"],
                                  ["", "entry", "trunk", "trunk.a", "trunk.n", "trunk.b"]))
    assert pairs(pl)["stem.weight"] == "entry.weight"  # the only one of its shapes: type order
    assert pairs(pl)["body.0.weight"] == "trunk.a.weight" and pairs(pl)["body.2.weight"] == "trunk.b.weight"
    assert pairs(pl)["body.1.running_var"] == "trunk.n._variance"
    assert decided(pl)["stem.weight"] == "type order" and decided(pl)["body.2.bias"] == "call order"


def test_two_unused_same_shape_heads_are_an_error_naming_both_sides():
    t = [mod("", "Net"), mod("head_a", "Linear", {"weight": [4, 8]}), mod("head_b", "Linear", {"weight": [4, 8]})]
    p = [mod("", "Port"), mod("x", "Linear", {"weight": [8, 4]}), mod("y", "Linear", {"weight": [8, 4]})]
    with pytest.raises(UsageError) as err:
        plan(t, p, traces=traced([""], [""]))
    message = str(err.value)
    for name in ("'head_a' (never called)", "'head_b' (never called)", "'x' (never called)", "'y' (never called)"):
        assert name in message
    assert "no call order to go by" in message and '[mapping]' in message and '"head_a" = "x"' in message
    assert "torch_to_paddle" in message and "\n" not in message


def test_mapping_settles_the_unused_heads_and_the_rest_follows():
    t = [mod("", "Net"), mod("head_a", "Linear", {"weight": [4, 8]}), mod("head_b", "Linear", {"weight": [4, 8]})]
    p = [mod("", "Port"), mod("x", "Linear", {"weight": [8, 4]}), mod("y", "Linear", {"weight": [8, 4]})]
    pl = plan(t, p, traces=traced([""], [""]), renames={"head_a": "y"})
    assert pairs(pl) == {"head_a.weight": "y.weight", "head_b.weight": "x.weight"}
    assert decided(pl) == {"head_a.weight": "user", "head_b.weight": "type order"}
    assert '[mapping] "head_a" = "y"' in pl.table()


def test_mapping_prefix_renames_whole_blocks_and_beats_a_same_name():
    t = [mod("", "Net"), mod("enc", "Block"), conv("enc.c1"), conv("enc.c2"), conv("c1")]
    p = [mod("", "Port"), mod("blocks", "Block"), conv("blocks.c1"), conv("blocks.c2"), conv("c1")]
    # definition and call order would agree with the names; the user says otherwise and is obeyed
    pl = plan(t, p, traces=traced(["", "enc", "enc.c1", "enc.c2", "c1"], ["", "blocks", "blocks.c1", "blocks.c2", "c1"]),
              renames={"enc.c1": "c1", "c1": "blocks.c1", "enc.c2": "blocks.c2"})
    assert pairs(pl) == {"enc.c1.weight": "c1.weight", "enc.c1.bias": "c1.bias", "enc.c2.weight": "blocks.c2.weight",
                         "enc.c2.bias": "blocks.c2.bias", "c1.weight": "blocks.c1.weight", "c1.bias": "blocks.c1.bias"}
    assert set(decided(pl).values()) == {"user"}


def test_mapping_errors_name_the_entry_with_a_suggestion():
    t = [mod("", "Net"), conv("conv1"), mod("fc", "Linear", {"weight": [2, 8]})]
    p = [mod("", "Port"), conv("block_a"), mod("fc", "Linear", {"weight": [8, 2]})]
    calls = traced(["", "conv1", "fc"], ["", "block_a", "fc"])
    with pytest.raises(RenameError, match=r"torch model has no module 'conv_1' \(did you mean 'conv1'\?\)") as err:
        plan(t, p, traces=calls, renames={"conv_1": "block_a"})
    assert err.value.key == "conv_1"
    with pytest.raises(RenameError, match=r"paddle model has no module 'block' \(did you mean 'block_a'\?\)"):
        plan(t, p, traces=calls, renames={"conv1": "block"})
    with pytest.raises(UsageError, match=r"\[mapping\] \"conv1\" = \"fc\": torch 'conv1' \(Conv2d: .*\) does not fit paddle "
                                         r"'fc' \(Linear: weight \[8, 2\]\)"):
        plan(t, p, traces=calls, renames={"conv1": "fc"})


# ---------------------------------------------------------------------------- calls
def test_a_shared_block_called_twice_pairs_with_one_called_twice():
    t = [mod("", "Net"), mod("a", "Linear", {"weight": [8, 8]}), mod("b", "Linear", {"weight": [8, 8]})]
    p = [mod("", "Port"), mod("y", "Linear", {"weight": [8, 8]}), mod("x", "Linear", {"weight": [8, 8]})]
    pl = plan(t, p, traces=traced(["", "a", "b", "b"], ["", "x", "y", "y"]))
    assert pairs(pl) == {"a.weight": "x.weight", "b.weight": "y.weight"}


def test_a_different_number_of_calls_is_an_error():
    t = [mod("", "Net"), mod("a", "Linear", {"weight": [8, 8]}), mod("b", "Linear", {"weight": [8, 8]})]
    p = [mod("", "Port"), mod("x", "Linear", {"weight": [8, 8]}), mod("y", "Linear", {"weight": [8, 8]})]
    with pytest.raises(UsageError, match=r"torch 'a' \(1 call\), 'b' \(2 calls\) and paddle 'x' \(2 calls\), 'y' \(1 call\)"
                                         r".*a different number of times"):
        plan(t, p, traces=traced(["", "a", "b", "b"], ["", "x", "x", "y"]))
    shared = [mod("", "Net"), mod("a", "Linear", {"weight": [8, 8]})]
    with pytest.raises(UsageError, match=r"torch 'a' \(2 calls\) and paddle 'x' \(1 call\), 'y' \(1 call\)"):
        plan(shared, p, traces=traced(["", "a", "a"], ["", "x", "y"]))


def test_without_a_traced_forward_definition_order_is_used_and_said():
    t = [mod("", "Net"), conv("conv1"), conv("conv2")]
    p = [mod("", "Port"), conv("second"), conv("first")]
    pl = plan(t, p, traces={"torch": {"calls": ["", "conv1", "conv2"]},
                            "paddle": {"calls": None, "error": "RuntimeError: boom"}})
    assert pairs(pl)["conv1.weight"] == "second.weight"
    assert set(decided(pl).values()) == {"definition order"}
    assert any("no traced paddle forward (RuntimeError: boom)" in n for n in pl.notes)
    assert "note: no traced paddle forward" in pl.table()


# ---------------------------------------------------------------------------- messages
def test_a_misfit_names_the_extra_tensor_and_its_side_without_repeating_a_shape():
    t = [mod("", "Net"), mod("bn1", "BatchNorm1d", {"weight": [8], "bias": [8]})]
    p = [mod("", "Port"), mod("norm_b", "BatchNorm1D", {"weight": [16], "bias": [16]})]
    with pytest.raises(UsageError) as err:
        plan(t, p, traces=traced(["", "bn1"], ["", "norm_b"]))
    message = str(err.value)
    assert "torch 'bn1' (BatchNorm1d: weight [8], bias [8]) has no paddle counterpart" in message
    assert "nearest paddle 'norm_b': " in message and "weight is [8] from torch but [16] in paddle" in message
    assert "expected" not in message and "torch_to_paddle" in message


def test_a_missing_bias_leads_with_the_tensor_and_names_nothing_unrelated():
    """Once a 600-character line naming fc2, its bias and the already paired fc1; now the tensor first."""
    t = [mod("", "Net"), mod("fc1", "Linear", {"weight": [16, 8], "bias": [16]}), mod("act", "ReLU"),
         mod("fc2", "Linear", {"weight": [3, 16], "bias": [3]})]
    p = [mod("", "Port"), mod("fc1", "Linear", {"weight": [8, 16], "bias": [16]}), mod("act", "ReLU"),
         mod("fc2", "Linear", {"weight": [16, 3]})]
    with pytest.raises(UsageError) as err:
        plan(t, p, traces=traced(["", "fc1", "act", "fc2"], ["", "fc1", "act", "fc2"]))
    message = str(err.value)
    assert message.startswith("weight mapping: torch 'fc2.bias' [3] has no paddle counterpart: paddle 'fc2' "
                              "(Linear: weight [16, 3]) has the rest of torch 'fc2' but no bias"), message
    assert "bias_attr=False" in message and "fc1" not in message and len(message) < 350


def test_an_extra_paddle_module_is_named_from_its_side():
    t = [mod("", "Net"), mod("fc", "Linear", {"weight": [2, 8]})]
    p = [mod("", "Port"), mod("fc", "Linear", {"weight": [8, 2]}), mod("extra", "Linear", {"weight": [8, 8]})]
    with pytest.raises(UsageError, match=r"paddle 'extra' \(Linear: weight \[8, 8\]\) \(never called\) is filled by no "
                                         r"torch tensor.*nearest torch 'fc' \(already paired\)"):
        plan(t, p, traces=traced(["", "fc"], ["", "fc"]))


# ---------------------------------------------------------------------------- config
def test_mapping_table_in_the_toml(tmp_path):
    (tmp_path / "pair.py").write_text("")
    text = 'pair = "pair.py"\n[mapping]\n"conv1" = "block_a"\nencoder.layer = "enc.layers"\n'
    cfg = parse.parse(text, tmp_path / "pair.toml")
    assert cfg.mapping == {"conv1": "block_a", "encoder.layer": "enc.layers"}
    (tmp_path / "pair.toml").write_text(text)
    err = parse.mapping_error(cfg, "encoder.layer", "[mapping] \"encoder.layer\": no module")
    assert str(err).startswith(f"{tmp_path / 'pair.toml'}:4: mapping.\"encoder.layer\": ")


@pytest.mark.parametrize("body, message", [
    ('"conv1" = 3', "expected a paddle module prefix"),
    ('"conv1" = "block a"', "'block a' is not a paddle module path"),
    ('"conv 1" = "b"', "'conv 1' is not a torch module path"),
    ('"a" = "x"\n"b" = "x"', "'a' and 'b' both map to paddle 'x'"),
])
def test_mapping_table_errors_point_at_the_line(tmp_path, body, message):
    (tmp_path / "pair.py").write_text("")
    with pytest.raises(ConfigError, match=rf"pair.toml:\d+: mapping.*{message}"):
        parse.parse(f'pair = "pair.py"\n[mapping]\n{body}\n', tmp_path / "pair.toml")


def test_mapping_key_suggestion_for_a_misspelt_table(tmp_path):
    (tmp_path / "pair.py").write_text("")
    with pytest.raises(ConfigError, match=r"unknown key 'maping' \(did you mean 'mapping'\?\)"):
        parse.parse('pair = "pair.py"\n[maping]\n"a" = "b"\n', tmp_path / "pair.toml")


# ---------------------------------------------------------------------------- the real pairs, recorded
@pytest.mark.parametrize("name", sorted(p.stem for p in FIXTURES.glob("*.json")))
def test_every_recorded_pair_maps_exactly_as_before(name):
    d = json.loads((FIXTURES / f"{name}.json").read_text())
    pl = plan(d["torch"]["modules"], d["paddle"]["modules"],
              traces={side: {"calls": d[side]["calls"]} for side in ("torch", "paddle")})
    assert sorted([e.torch_name, e.paddle_name, e.transform] for e in pl.entries) == sorted(d["expected"])
    assert [list(x) for x in pl.dropped] == d["dropped"]
    assert not pl.notes


def test_bert_is_decided_by_names_and_call_order_and_its_dropouts_pair():
    d = json.loads((FIXTURES / "bert_sst2.json").read_text())
    pl = plan(d["torch"]["modules"], d["paddle"]["modules"],
              traces={side: {"calls": d[side]["calls"]} for side in ("torch", "paddle")})
    assert Counter(e.decided_by for e in pl.entries) == {"call order": 34, "same name": 7}
    by_torch = {dp.torch: dp for dp in pl.dropouts}
    attention = by_torch["bert.encoder.layer.1.attention.self"]  # HF's functional sdpa dropout_p
    assert attention.paddle == "bert.encoder.layers.1.self_attn" and attention.paddle_site["functional"]
    assert by_torch["bert.encoder.layer.0.output.dropout"].paddle == "bert.encoder.layers.0.dropout2"
    assert by_torch["dropout"].paddle == "dropout" and len(pl.dropouts) == 8
    unpaired = {(u["side"], u["name"]): u["why"] for u in pl.unpaired_dropouts}
    assert unpaired[("paddle", "bert.encoder.layers.0.dropout")].startswith("0 torch vs 1 paddle")  # act_dropout
    assert unpaired[("torch", "bert.encoder.layer.0.attention.self.dropout")] == "never called"  # sdpa skips it
    report = pl.to_json()
    assert report["dropout"][0]["torch_p"] == 0.0 and {"torch_mode", "paddle_mode", "after"} <= set(report["dropout"][0])
    assert {p["decided_by"] for p in report["pairs"]} == {"call order", "same name"}


def test_dropouts_with_a_different_count_after_one_weight_are_not_guessed():
    site = {"p": 0.1, "mode": "upscale_in_train", "functional": False}
    t = [mod("", "Net"), mod("fc", "Linear", {"weight": [8, 8]}), mod("d1", "Dropout", site=site)]
    p = [mod("", "Port"), mod("fc", "Linear", {"weight": [8, 8]}), mod("d1", "Dropout", site=site),
         mod("d2", "Dropout", site={**site, "p": 0.5})]
    pl = plan(t, p, traces=traced(["", "fc", "d1"], ["", "fc", "d1", "d2"]))
    assert pl.dropouts == []
    assert {u["name"] for u in pl.unpaired_dropouts} == {"d1", "d2"}


def test_init_template_documents_the_mapping_table():
    template = (parse.templates_dir() / "pair.toml").read_text()
    assert "# [mapping]" in template
    uncommented = "\n".join(line[2:] if line.startswith(('# [mapping]', '# "')) else line
                            for line in template.splitlines())
    cfg = parse.parse(uncommented, parse.templates_dir() / "pair.toml")
    assert cfg.mapping == {"conv1": "block_a", "encoder.layer": "enc.layers"}


def test_tied_weights_pair_by_call_order_and_are_filled_once():
    t = [mod("", "Net"), mod("enc", "Linear", {"weight": [8, 8], "bias": [8]}),
         mod("dec", "Linear", {"weight": [8, 8], "bias": [8]})]
    t[2]["ids"]["weight"] = t[1]["ids"]["weight"]  # dec.weight is enc.weight
    p = [mod("", "Port"), mod("out", "Linear", {"weight": [8, 8], "bias": [8]}),
         mod("inp", "Linear", {"weight": [8, 8], "bias": [8]})]
    p[1]["ids"]["weight"] = p[2]["ids"]["weight"] = "shared"  # out.weight is inp.weight
    # torch's first-defined module holds the tensor, paddle's second-defined one: the call order decides
    pl = plan(t, p, traces=traced(["", "enc", "dec"], ["", "inp", "out"]))
    assert {(e.torch_name, e.paddle_name, e.alias_of) for e in pl.entries} == {
        ("enc.weight", "inp.weight", None), ("enc.bias", "inp.bias", None), ("dec.bias", "out.bias", None),
        ("enc.weight", "out.weight", "inp.weight")}
    assert pl.dropped == [("dec.weight", "tied to enc.weight")]


def test_same_names_called_in_another_order_pair_by_name_with_a_note():
    t = [mod("", "Net"), conv("a"), conv("b")]
    p = [mod("", "Port"), conv("a"), conv("b")]
    pl = plan(t, p, traces=traced(["", "a", "b"], ["", "b", "a"]))
    assert pairs(pl)["a.weight"] == "a.weight"
    assert any("torch calls a, b, paddle calls their counterparts b, a" in n for n in pl.notes)
    assert not plan(t, p, traces=traced(["", "a", "b"], ["", "a", "b"])).notes


def test_mapping_of_a_fused_attention_takes_its_out_proj_along():
    t = [mod("", "Net"), mod("attn", "MultiheadAttention", {"in_proj_weight": [12, 4], "in_proj_bias": [12]}),
         mod("attn.out_proj", "NonDynamicallyQuantizableLinear", {"weight": [4, 4], "bias": [4]})]
    p = [mod("", "Port"), mod("cross", "MultiHeadAttention")] + [
        mod(f"cross.{c}", "Linear", {"weight": [4, 4], "bias": [4]}) for c in ("q_proj", "k_proj", "v_proj", "out_proj")]
    # torch computes out_proj functionally: only the attention itself is called
    pl = plan(t, p, traces=traced(["", "attn"], ["", "cross", "cross.q_proj", "cross.k_proj", "cross.v_proj",
                                                 "cross.out_proj"]), renames={"attn": "cross"})
    assert pairs(pl)["attn.out_proj.weight"] == "cross.out_proj.weight"
    assert decided(pl)["attn.out_proj.bias"] == "user" and decided(pl)["attn.in_proj_weight"] == "user"


# ---------------------------------------------------------------------------- what modules are, not what they are called
def test_same_name_same_tensors_pair_whatever_the_classes_are_called():
    """HF's LlamaRMSNorm and PaddleFormers' RMSNorm, HF's Linear and a port's own matmul layer."""
    t = [mod("", "LlamaForCausalLM"), mod("model.norm", "LlamaRMSNorm", {"weight": [32]}),
         mod("model.q_proj", "Linear", {"weight": [32, 32]}), mod("lm_head", "Linear", {"weight": [100, 32]})]
    p = [mod("", "LlamaForCausalLM"), mod("model.norm", "RMSNorm", {"weight": [32]}),
         mod("model.q_proj", "Linear", {"weight": [32, 32]}), mod("lm_head", "LlamaLMHead", {"weight": [100, 32]})]
    pl = plan(t, p, traces=traced(["", "model.q_proj", "model.norm", "lm_head"], ["", "model.q_proj", "model.norm",
                                                                                    "lm_head"]))
    assert pairs(pl) == {"model.norm.weight": "model.norm.weight", "model.q_proj.weight": "model.q_proj.weight",
                         "lm_head.weight": "lm_head.weight"}
    assert set(decided(pl).values()) == {"same name"}
    head = next(e for e in pl.entries if e.torch_name == "lm_head.weight")
    assert head.transform == "copy" and head.layout == "shape"  # [vocab, hidden] on both sides


def test_renamed_modules_of_other_classes_pair_by_call_order_and_an_undecidable_pair_is_named():
    t = [mod("", "Net"), mod("n1", "LlamaRMSNorm", {"weight": [8]}), mod("n2", "LlamaRMSNorm", {"weight": [8]})]
    p = [mod("", "Port"), mod("x", "RMSNorm", {"weight": [8]}), mod("y", "RMSNorm", {"weight": [8]})]
    pl = plan(t, p, traces=traced(["", "n1", "n2"], ["", "y", "x"]))
    assert pairs(pl) == {"n1.weight": "y.weight", "n2.weight": "x.weight"}
    with pytest.raises(UsageError, match=r"cannot tell which paddle module is which torch one among torch 'n1' "
                                         r"\(never called\), 'n2' \(never called\) and paddle 'x'"):
        plan(t, p, traces=traced([""], [""]))


def test_paddle_statistics_names_and_a_torch_only_counter_need_no_class_name():
    t = [mod("", "Net"), mod("norm", "BatchNorm1d", {"weight": [4], "bias": [4]},
                             {"running_mean": [4], "running_var": [4], "num_batches_tracked": []})]
    p = [mod("", "Port"), mod("norm", "MyBatchNorm", {"weight": [4], "bias": [4], "_mean": [4], "_variance": [4]})]
    pl = plan(t, p, traces=traced(["", "norm"], ["", "norm"]))
    assert pairs(pl)["norm.running_var"] == "norm._variance"
    assert pl.dropped == [("norm.num_batches_tracked", "no paddle counterpart")]


def test_a_2d_weight_in_torch_layout_pairs_and_its_shape_decides_the_layout():
    """PaConvert's paddle.compat.nn.Linear keeps torch's [out, in]: it pairs, and loads as is."""
    t = [mod("", "Net"), mod("fc", "Linear", {"weight": [6, 4], "bias": [6]})]
    p = [mod("", "Port"), {**mod("fc", "Linear", {"weight": [6, 4], "bias": [6]}), "class": "paddle.compat.nn.Linear"}]
    pl = plan(t, p, traces=traced(["", "fc"], ["", "fc"]))
    fc = next(e for e in pl.entries if e.torch_name == "fc.weight")
    assert (fc.transform, fc.layout) == ("copy", "shape")
    assert "layout of 2-D tensors by: shape 1" in pl.table() and pl.to_json()["pairs"][0]["layout"] == "shape"
