"""What training did, judged relative to its own size: parameters by their update (a dropped weight
decay of 1e-4 on AlexNet is a fraction of every update, never of the weight), no_decay read
against torch's names on both sides, the lr schedule read past its milestones, and a run that
stops paying once its answer is known (exact keys and the checks after the first real
divergence skip float64)."""

import importlib.util
import os
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import PAIRS, check, cli, report
from harness.checks.common import decay_difference, judge
from harness.config.optim_table import PLATEAU_STEPS, schedule_reach
from harness.verdict import rules
from harness.verdict.diff import compare_dicts
from harness.verdict.keys import Key, Kind
from harness.verdict.rules import Evidence
from harness.verdict.tolerance import Tolerance, ToleranceConfig

ALEXNET = PAIRS / "alexnet" / "pair.toml"
ROUNDOFF = PAIRS / "roundoff" / "pair.toml"
BERT = PAIRS / "bert_no_decay"
HAVE_BERT_LIBS = all(importlib.util.find_spec(m) is not None for m in ("transformers", "paddlenlp"))
NEEDS_BERT = pytest.mark.skipif(not HAVE_BERT_LIBS and not os.environ.get("REPROD_REQUIRE_EXAMPLES"),
                                reason="needs the examples extra + paddlenlp (REPROD_REQUIRE_EXAMPLES=1 makes this a "
                                       "failure)")


def _trained(decay: float, noise: float, seed: int = 0):
    """A weight of magnitude 0.03 after 5 SGD steps of lr 1e-3 (float32), torch's with a coupled
    decay of 1e-4, paddle's with `decay` and a relative round-off of `noise` on its update."""
    rng = np.random.default_rng(seed)
    w0 = (rng.standard_normal(4096) * 0.03).astype(np.float32)
    grads = rng.standard_normal((5, 4096)) * 1e-3
    torch_w, paddle_w = w0.astype(np.float64), w0.astype(np.float64)
    for g in grads:
        torch_w = torch_w - 1e-3 * (g + 1e-4 * torch_w)
        paddle_w = paddle_w - 1e-3 * (g * (1 + noise * rng.standard_normal(g.shape)) + decay * paddle_w)
    return w0, torch_w.astype(np.float32), paddle_w.astype(np.float32)


@pytest.mark.parametrize("decay, noise, aligned", [(1e-4, 1e-6, True), (0.0, 0.0, False)],
                         ids=["round_off", "decay_dropped"])
def test_parameters_are_judged_by_their_update(decay, noise, aligned):
    w0, torch_w, paddle_w = _trained(decay, noise)
    key = Key(Kind.PARAM, "fc.weight")
    plain = compare_dicts("backward", {key: torch_w}, {key: paddle_w}, ToleranceConfig())
    assert plain.passed  # a fixed bound of 1e-6 on the values sees nothing either way
    result = judge("backward", {key: torch_w}, {key: paddle_w}, ToleranceConfig(), Evidence(initial={"fc.weight": w0}))
    assert result.passed == aligned, result.keys[0].reason
    assert result.keys[0].update == pytest.approx(np.mean(np.abs(torch_w.astype(np.float64) - w0)))
    if not aligned:
        assert result.keys[0].reason.startswith("its update differs") and rules.arbitrable(result.keys[0])


def test_a_tolerance_pattern_keeps_the_absolute_limit_it_gives():
    w0, torch_w, paddle_w = _trained(0.0, 0.0)
    key = Key(Kind.PARAM, "fc.weight")
    tolerances = ToleranceConfig(keys={"param:fc.*": Tolerance(1e-6)})
    result = judge("backward", {key: torch_w}, {key: paddle_w}, tolerances, Evidence(initial={"fc.weight": w0}))
    assert result.passed and result.keys[0].update is None


def test_a_parameter_torch_never_moved_must_not_move_in_paddle():
    w0 = np.full(8, 0.5, np.float32)
    key = Key(Kind.PARAM, "frozen")
    result = judge("backward", {key: w0.copy()}, {key: w0 - 5e-7}, ToleranceConfig(), Evidence(initial={"frozen": w0}))
    assert not result.passed and "torch did not move it" in result.keys[0].reason


def test_exact_keys_are_never_sent_to_float64():
    dropout, lr = Key(Kind.DROPOUT, "classifier.3"), Key(Kind.LR, "step", step=30)
    labels = Key(Kind.VALUE, "out.pred")
    result = compare_dicts("train", {dropout: np.array([0.5, 0.0]), lr: np.float64(1.25e-4),
                                     labels: np.array([1, 2], np.int64)},
                           {dropout: np.array([0.2, 0.0]), lr: np.float64(6.25e-4), labels: np.array([1, 3], np.int64)},
                           Tolerance(0.0, max=0.0))
    assert [k.passed for k in result.keys] == [False, False, False]
    assert not any(rules.arbitrable(k) for k in result.keys) and rules.settled(result)
    loss = compare_dicts("backward", {Key(Kind.LOSS, step=1): np.float32(2.0)}, {Key(Kind.LOSS, step=1): np.float32(2.1)},
                         ToleranceConfig())
    assert rules.arbitrable(loss.keys[0]) and not rules.settled(loss)


def test_a_schedule_is_read_past_its_step_sizes_milestones_and_warmup():
    assert schedule_reach(SimpleNamespace(step_size=30)) == 61  # torch StepLR / paddle StepDecay: two decays
    assert schedule_reach(SimpleNamespace(milestones={30: 1, 80: 1})) == 82  # MultiStepLR's Counter
    warm = SimpleNamespace(warmup_steps=10, learning_rate=SimpleNamespace(step_size=20))  # paddle LinearWarmup
    assert schedule_reach(warm) == 41
    assert schedule_reach(SimpleNamespace(patience=2, cooldown=0)) == PLATEAU_STEPS
    assert schedule_reach(SimpleNamespace(T_max=100)) == 0 and schedule_reach(None) == 0


def test_decay_difference_names_the_parameters():
    torch_side = {"fc.weight": "L2 0.0001", "norm.weight": "L2 0.0001"}
    assert decay_difference({"torch": torch_side, "paddle": dict(torch_side)}) == ""
    assert decay_difference({"torch": torch_side, "paddle": None}) == ""  # a pair's own optimizer not read
    text = decay_difference({"torch": {"fc.weight": "decoupled 0.01"},
                             "paddle": {"fc.weight": "decoupled 0.01", "norm.weight": "decoupled 0.01"}})
    assert text == "weight decay differs: paddle decays 1 parameters that torch does not: norm.weight"
    assert "decayed differently (fc.weight: torch L2 0.0001, paddle L2 0.001)" in decay_difference(
        {"torch": {"fc.weight": "L2 0.0001"}, "paddle": {"fc.weight": "L2 0.001"}})


@pytest.mark.e2e
def test_alexnet_as_the_guide_sets_it_up_is_aligned(tmp_path):
    proc = cli("run", ALEXNET, "--out", tmp_path / "o")  # every check
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rep = report(tmp_path / "o")
    assert len(check(rep, "lr")["keys"]) == 61  # StepLR(step_size=30): read past its second decay
    backward = check(rep, "backward")
    assert set(backward["decay"]["torch"].values()) == {"L2 0.0001"} and backward["decay"]["torch"] == \
        backward["decay"]["paddle"]
    params = [k for k in backward["keys"] if k["key"].startswith("param:")]
    assert params and all(k["update"] > 0 and k["threshold"] == pytest.approx(1e-4 * k["update"]) for k in params)


@pytest.mark.e2e
def test_a_dropped_weight_decay_on_alexnet_is_misaligned_naming_the_optimizer(tmp_path):
    proc = cli("run", ALEXNET, "--checks", "forward,backward", "--out", tmp_path / "o",
               env={"REPROD_TEST_BUG": "weight_decay"})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    rep = report(tmp_path / "o")
    backward = check(rep, "backward")
    assert backward["arbitration"] == "float64"  # not round-off: float64 still differs
    failing = [k for k in backward["keys"] if not k["passed"]]
    assert failing and all(k["key"].startswith("param:") and "float64 still differs" in k["reason"] for k in failing)
    assert all(k["passed"] for k in backward["keys"] if k["key"].startswith("loss_"))  # the losses alone pass
    div = rep["first_divergence"]
    assert div["where"] == "update" and div["step"] == 0
    assert "the optimizer" in div["detail"] and "torch decays 16 parameters that paddle does not" in div["detail"]


@pytest.mark.e2e
@pytest.mark.parametrize("bug", ["momentum", "clip"])
def test_a_momentum_or_clipping_difference_is_misaligned_naming_the_optimizer(tmp_path, bug):
    proc = cli("run", ALEXNET, "--checks", "backward", "--out", tmp_path / "o", env={"REPROD_TEST_BUG": bug})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    rep = report(tmp_path / "o")
    assert any(k["key"].startswith("param:") and not k["passed"] for k in check(rep, "backward")["keys"])
    div = rep["first_divergence"]
    assert div["where"] == "update" and "the optimizer" in div["detail"], div
    assert div["step"] == (1 if bug == "momentum" else 0)  # momentum first acts on the second step
    if bug == "momentum":
        assert "the momentum" in div["detail"], div["detail"]


@pytest.mark.e2e
def test_a_dropout_probability_costs_no_float64_and_no_tracing(tmp_path):
    proc = cli("run", ALEXNET, "--checks", "forward,train", "--out", tmp_path / "o", env={"REPROD_TEST_BUG": "dropout_p"})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    rep = report(tmp_path / "o")
    train = check(rep, "train")
    assert [k["key"] for k in train["keys"] if not k["passed"]] == ["dropout:classifier.3"]
    assert train["arbitration"].startswith("not needed") and not (tmp_path / "o" / "float64").exists()
    div = rep["first_divergence"]
    assert (div["check"], div["where"], div["layer"]) == ("train", "dropout", "classifier.3")
    assert "p 0.5" in div["detail"] and "p 0.2" in div["detail"]


@pytest.mark.e2e
def test_checks_after_the_first_real_divergence_are_not_re_run_in_float64(tmp_path):
    """A LayerNorm epsilon of 1e-4 for 1e-5: forward differs in float64 too; loss and backward fail
    as its consequence and are not re-run."""
    proc = cli("run", ROUNDOFF, "--checks", "forward,loss,backward", "--out", tmp_path / "o",
               env={"REPROD_TEST_BUG": "layernorm_eps"})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    rep = report(tmp_path / "o")
    assert check(rep, "forward")["arbitration"] == "float64"
    for name in ("loss", "backward"):
        assert not check(rep, name)["passed"]
        assert check(rep, name)["arbitration"].startswith("not run: the forward check differs"), check(rep, name)
    assert not (tmp_path / "o" / "float64" / "bp_align_torch.npy").exists()
    assert rep["first_divergence"]["layer"] == "encoder.layers.0.norm1"


RENAMED = '''
import numpy as np
import paddle
import torch


class TorchNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.ln, self.fc2 = torch.nn.Linear(8, 16), torch.nn.LayerNorm(16), torch.nn.Linear(16, 3)

    def forward(self, x):
        return self.fc2(self.ln(self.fc1(x)))


class PaddleNet(paddle.nn.Layer):  # the port calls its LayerNorm `norm`
    def __init__(self):
        super().__init__()
        self.fc1, self.norm, self.fc2 = paddle.nn.Linear(8, 16), paddle.nn.LayerNorm(16), paddle.nn.Linear(16, 3)

    def forward(self, x):
        return self.fc2(self.norm(self.fc1(x)))


def build_torch():
    return TorchNet()


def build_paddle():
    return PaddleNet()


def make_batch(rng, step):
    return {"x": rng.standard_normal((8, 8), dtype=np.float32), "label": rng.integers(0, 3, size=(8,), dtype=np.int64)}
'''


@pytest.mark.e2e
def test_no_decay_is_read_against_torch_names_on_both_sides(make_pair, tmp_path):
    toml = make_pair(RENAMED, '[data]\ninputs = ["x"]\n[optimizer]\nname = "adamw"\nlr = 0.01\nweight_decay = 0.1\n'
                              'no_decay = ["bias", "ln.weight"]\n', name="renamed")
    proc = cli("run", toml, "--checks", "backward", "--out", tmp_path / "o")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    decay = check(report(tmp_path / "o"), "backward")["decay"]
    assert decay["torch"] == decay["paddle"] == {"fc1.weight": "decoupled 0.1", "fc2.weight": "decoupled 0.1"}


@pytest.mark.e2e
@NEEDS_BERT
def test_no_decay_by_hf_names_is_aligned_on_hf_vs_paddlenlp(tmp_path):
    proc = cli("run", BERT / "pair.toml", "--checks", "backward", "--out", tmp_path / "o", timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    decay = check(report(tmp_path / "o"), "backward")["decay"]
    assert decay["torch"] == decay["paddle"]
    layernorms = [n for n in decay["torch"] if "LayerNorm" in n]
    assert not layernorms and "bert.encoder.layer.0.attention.output.dense.weight" in decay["torch"]


@pytest.mark.e2e
@NEEDS_BERT
def test_a_port_decaying_other_parameters_fails_naming_them_and_decay(tmp_path):
    proc = cli("run", BERT / "own_optimizer.toml", "--checks", "backward", "--out", tmp_path / "o", timeout=600)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    rep = report(tmp_path / "o")
    layernorms = ["bert.embeddings.LayerNorm.weight"] + [f"bert.encoder.layer.{i}.{where}.LayerNorm.weight"
                                                         for i in range(2) for where in ("attention.output", "output")]
    failing = [k["key"] for k in check(rep, "backward")["keys"] if not k["passed"]]
    assert sorted(failing) == sorted(f"param:{n}" for n in layernorms)
    detail = rep["first_divergence"]["detail"]
    assert "weight decay differs: paddle decays 5 parameters that torch does not" in detail
    assert all(n in detail for n in layernorms)
