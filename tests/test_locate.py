"""Localization: injected bugs are each named at the right module or parameter; aligned pairs get
no divergence. One pair of workers serves every case (Session.use() rebuilds both models for
the next pair), so the whole file costs a few worker start-ups, not one per case."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import PAIRS, cli, needs_bert_libs, pair_folder, report
from harness import locate
from harness.checks import CHECKS
from harness.config import parse
from harness.coordinator import trace_context
from harness.session import RunOptions, Session
from harness.verdict.tolerance import Tolerance

# Embedding -> Linear -> 2 residual blocks (LayerNorm, Linear, GELU) -> head. The torch side is the
# reference; BUG changes only the paddle side. Small initial weights keep LayerNorm's input
# variance near 1e-4, where an epsilon of 1e-5 instead of 1e-12 matters. The position embedding
# is (1, T, D) in torch and (B, T, D) in paddle: a size-1 axis difference that is not a bug.
TRANSFORMER = '''
import numpy as np
import paddle
import torch

BUG = "{bug}"
D, T, V, C = 32, 6, 50, 4
FUNCTIONAL = BUG == "act_functional"


class TorchBlock(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = torch.nn.LayerNorm(D, eps=1e-12)
        self.fc = torch.nn.Linear(D, D)
        self.act = torch.nn.GELU()

    def forward(self, x):
        h = self.norm(x)
        h = torch.nn.functional.gelu(h) if FUNCTIONAL else self.act(h)
        return x + self.fc(h)


class TorchNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.tok = torch.nn.Embedding(V, D)
        self.pos = torch.nn.Embedding(T, D)
        self.proj = torch.nn.Linear(D, D)
        self.blocks = torch.nn.ModuleList([TorchBlock() for _ in range(2)])
        self.head = torch.nn.Linear(D, C)

    def forward(self, ids):
        x = self.tok(ids) + self.pos(torch.arange(T)[None])
        x = self.proj(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x.mean(1))


class PaddleBlock(paddle.nn.Layer):
    def __init__(self, index):
        super().__init__()
        self.index = index
        eps = 1e-5 if BUG == "ln_eps" and index == 1 else 1e-12
        self.norm = paddle.nn.LayerNorm(D, epsilon=eps)
        self.fc = paddle.nn.Linear(D, D)
        self.act = paddle.nn.ReLU() if BUG == "act_module" and index == 0 else paddle.nn.GELU()

    def forward(self, x):
        h = self.norm(x.detach() if BUG == "detach" and self.index == 0 else x)
        if FUNCTIONAL:
            h = paddle.nn.functional.relu(h) if self.index == 0 else paddle.nn.functional.gelu(h)
        else:
            h = self.act(h)
        h = self.fc(h)
        return x + (2.0 * h if BUG == "scale" and self.index == 1 else h)


class PaddleNet(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.tok = paddle.nn.Embedding(V, D)
        self.pos = paddle.nn.Embedding(T, D)
        self.proj = paddle.nn.Linear(D, D)
        self.blocks = paddle.nn.LayerList([PaddleBlock(i) for i in range(2)])
        self.head = paddle.nn.Linear(D, C)

    def forward(self, ids):
        x = self.tok(ids) + self.pos(paddle.arange(T)[None].expand([ids.shape[0], T]))
        x = self.proj(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x.mean(1))


def build_torch():
    model = TorchNet()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name and BUG != "decay":  # decay needs biases of a size it visibly shrinks
                p.mul_(0.01)
    return model


def build_paddle():
    return PaddleNet()


def make_batch(rng, step):
    return {{"ids": rng.integers(0, V, size=(8, T), dtype=np.int64),
            "label": rng.integers(0, C, size=(8,), dtype=np.int64)}}


NO_DECAY = ("bias", "norm")


class TorchAccumulate:
    """Gradient accumulation over 2 calls: step and clear every second call."""

    def __init__(self, optimizer):
        self.optimizer, self.calls = optimizer, 0
        self.param_groups = optimizer.param_groups

    def step(self):
        self.calls += 1
        if self.calls % 2 == 0:
            self.optimizer.step()

    def zero_grad(self, set_to_none=True):
        if self.calls % 2 == 0:
            self.optimizer.zero_grad(set_to_none=set_to_none)


class PaddleAccumulate:
    """The same in paddle; the bug clears the gradients on every call, so each update applies only
    the second call's gradients."""

    def __init__(self, optimizer):
        self.optimizer, self.calls = optimizer, 0

    def get_lr(self):
        return self.optimizer.get_lr()

    def step(self):
        self.calls += 1
        if self.calls % 2 == 0:
            self.optimizer.step()

    def clear_grad(self, set_to_zero=False):
        if self.calls % 2 == 0 or BUG == "accumulate":
            self.optimizer.clear_grad(set_to_zero=set_to_zero)


def optimizer_torch(model, total_steps):
    named = list(model.named_parameters())
    groups = [{{"params": [p for n, p in named if not any(s in n for s in NO_DECAY)], "weight_decay": 0.1}},
              {{"params": [p for n, p in named if any(s in n for s in NO_DECAY)], "weight_decay": 0.0}}]
    optimizer = torch.optim.AdamW(groups, lr=0.01)
    return (TorchAccumulate(optimizer) if BUG.startswith("accumulate") else optimizer), None


def optimizer_paddle(model, total_steps):
    if BUG == "decay":  # the trap: paddle hands param.name (linear_3.b_0), not the structured name
        decide = lambda name: not any(s in name for s in NO_DECAY)
    else:
        keep = {{p.name for n, p in model.named_parameters() if not any(s in n for s in NO_DECAY)}}
        decide = lambda name: name in keep
    lr = 0.02 if BUG == "lr" else 0.01
    epsilon = 1e-6 if BUG == "epsilon" else 1e-8  # torch's default 1e-8
    optimizer = paddle.optimizer.AdamW(learning_rate=lr, parameters=model.parameters(), weight_decay=0.1,
                                       apply_decay_param_fun=decide, epsilon=epsilon)
    return (PaddleAccumulate(optimizer) if BUG.startswith("accumulate") else optimizer), None


def loss_torch(output, batch):
    return torch.nn.functional.cross_entropy(output, batch["label"])


def loss_paddle(output, batch):
    smoothing = 0.1 if BUG == "loss" else 0.0
    return paddle.nn.functional.cross_entropy(output, batch["label"], label_smoothing=smoothing)
'''

UNTRANSPOSED_MAPPING = '''

def torch_to_paddle(state):
    """A user's mapping that forgets one square Linear weight."""
    linear = {"proj.weight", "blocks.0.fc.weight", "blocks.1.fc.weight", "head.weight"}
    return {k: (v.T if k in linear and k != "blocks.0.fc.weight" else v) for k, v in state.items()}
'''

TRANSFORMER_TOML = """
[data]
inputs = ["ids"]
[loss]
kind = "pair"
[train]
iters = 3
"""

# Conv2d (with a bias, right before BatchNorm: its gradient is rounding noise) -> BN -> ReLU -> head,
# trained in train mode with Adam.
CNN = '''
import numpy as np
import paddle
import torch

BUG = "{bug}"


class TorchCNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = torch.nn.BatchNorm2d(8)
        self.conv2 = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = torch.nn.BatchNorm2d(8)
        self.head = torch.nn.Linear(8, 5)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.head(x.mean((2, 3)))


class PaddleCNN(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.conv1 = paddle.nn.Conv2D(3, 8, 3, padding=1)
        # paddle momentum 0.9 is torch momentum 0.1; the bug copies torch's number
        self.bn1 = paddle.nn.BatchNorm2D(8, momentum=0.1 if BUG == "bn_momentum" else 0.9)
        self.conv2 = paddle.nn.Conv2D(8, 8, 3, padding=1)
        self.bn2 = paddle.nn.BatchNorm2D(8)
        self.head = paddle.nn.Linear(8, 5)

    def forward(self, x):
        x = paddle.nn.functional.relu(self.bn1(self.conv1(x)))
        x = paddle.nn.functional.relu(self.bn2(self.conv2(x)))
        return self.head(x.mean((2, 3)))


def build_torch():
    return TorchCNN()


def build_paddle():
    return PaddleCNN()


def make_batch(rng, step):
    return {{"image": (rng.standard_normal((6, 3, 8, 8)) * 2 + 1).astype(np.float32),
            "label": rng.integers(0, 5, size=(6,), dtype=np.int64)}}


def optimizer_torch(model, total_steps):
    return torch.optim.Adam(model.parameters(), lr=0.01), None


def optimizer_paddle(model, total_steps):
    return paddle.optimizer.Adam(learning_rate=0.01, parameters=model.parameters()), None
'''

CNN_TOML = """
[data]
inputs = ["image"]
[train]
iters = 5
mode = "train"
"""


def transformer_pair(tmp_path, bug: str):
    source = TRANSFORMER.format(bug=bug) + (UNTRANSPOSED_MAPPING if bug == "untransposed" else "")
    return pair_folder(tmp_path, f"tf_{bug}", source, TRANSFORMER_TOML)


def cnn_pair(tmp_path, bug: str):
    return pair_folder(tmp_path, f"cnn_{bug}", CNN.format(bug=bug), CNN_TOML)


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    first = transformer_pair(tmp_path_factory.mktemp("first"), "none")
    s = Session(parse.load(first), RunOptions(out_dir=tmp_path_factory.mktemp("out")), progress=lambda m: None)
    s.start()
    yield s
    s.close()


def run_and_locate(session, toml, checks):
    """The same workers, the next pair: rebuild both models, run the checks, then localize."""
    session.use(parse.load(toml).replace(checks=tuple(checks)))
    results = [CHECKS[name](session) for name in checks]
    return results, locate.locate(trace_context(session), results, always=True)


def test_size_one_axes_are_no_divergence():
    """(1, T, H) vs (B, T, H) and (B, T, 1) vs (B, T) compare by value; gradients of a broadcast
    tensor compare against the sum over the broadcast axis; a real shape or value gap still differs."""
    tol = Tolerance(1e-6)
    rng = np.random.default_rng(0)
    pos = rng.standard_normal((1, 4, 3)).astype(np.float32)
    assert not locate.compare_loose("pos", pos, np.repeat(pos, 5, axis=0), tol).differs
    col = rng.standard_normal((2, 4, 1)).astype(np.float32)
    assert not locate.compare_loose("col", col, col[..., 0], tol).differs
    grads = rng.standard_normal((5, 4, 3)).astype(np.float32)
    assert not locate.compare_loose("g", grads.sum(0, keepdims=True), grads, tol, grad=True).differs
    assert locate.compare_loose("g", grads[:1], grads, tol, grad=True).differs
    assert locate.compare_loose("pos", pos, np.repeat(pos, 5, axis=0) + 1e-3, tol).differs
    assert locate.compare_loose("t", pos[0], pos[0].T, tol).differs  # (4, 3) vs (3, 4): never transposed
    flipped = rng.standard_normal((8, 10)).astype(np.float32)
    assert locate.compare_loose("flip", flipped, flipped[:, ::-1], tol).differs


FWD = ["forward", "loss"]
ALL = ["forward", "loss", "backward"]

BUGS = [
    # bug, pair, checks, expected where, expected layer
    ("ln_eps", transformer_pair, FWD, "forward", "blocks.1.norm"),
    ("act_module", transformer_pair, FWD, "forward", "blocks.0.act"),
    ("act_functional", transformer_pair, FWD, "inside", "blocks.0"),
    ("untransposed", transformer_pair, FWD, "parameter", "blocks.0.fc"),
    ("scale", transformer_pair, FWD, "inside", "blocks.1"),
    ("loss", transformer_pair, FWD, "loss", None),
    ("detach", transformer_pair, ALL, "grad", "proj"),
    ("decay", transformer_pair, ALL, "update", None),
    ("lr", transformer_pair, ALL, "update", None),
    ("epsilon", transformer_pair, ALL, "update", None),
    ("accumulate", transformer_pair, ALL, "update", None),
    ("bn_momentum", cnn_pair, ["backward"], "buffer", "bn1"),
]


@pytest.mark.e2e
@pytest.mark.parametrize("bug, make, checks, where, layer", BUGS, ids=[b[0] for b in BUGS])
def test_injected_bug_is_located(session, tmp_path, bug, make, checks, where, layer):
    results, outcome = run_and_locate(session, make(tmp_path, bug), checks)
    found = outcome.finding
    assert found is not None, (bug, [(r.name, r.passed) for r in results], outcome.notes)
    assert (found.where, found.layer if layer is not None else None) == (where, layer), found.detail
    if bug == "untransposed":
        assert "untransposed" in found.detail
    if bug == "act_module":
        assert "GELU" in found.detail and "ReLU" in found.detail
    if bug == "decay":
        # paddle's names are linear_3.b_0 and layer_norm_1.w_0: "bias" matches none of them, "norm"
        # still matches the LayerNorm ones, so exactly the four Linear biases are decayed wrongly
        excluded = ["proj.bias", "blocks.0.fc.bias", "blocks.1.fc.bias", "head.bias"]
        assert f"paddle decays {len(excluded)} parameters that torch does not: " in found.detail, found.detail
        listed = found.detail.split("torch does not: ")[1]
        assert sorted(listed.split(", ")) == sorted(excluded), found.detail
        assert found.step == 0
    if bug == "epsilon":  # the updates differ where the gradients are small
        assert "epsilon" in found.detail and "the optimizer" in found.detail, found.detail
        assert found.step == 0
    if bug == "accumulate":  # the updates part ways at the first step that applies them: step 1
        assert found.step == 1 and "accumulat" in found.detail, found.detail
    if bug == "lr":
        assert "2x torch's for every parameter: the learning rate" in found.detail, found.detail
    if bug == "bn_momentum":
        assert "momentum convention" in found.detail, found.detail
        assert found.step == 0
    if where in ("forward", "inside", "parameter"):
        assert found.path and found.path[0]["module"] == "(model)"
        assert any(row["status"] == "HERE" for row in found.around) or where == "inside"


# Pairs of tests/pairs/ whose first differing module's input already differs: the sentence names
# the module whose forward made it, not the one that received it.
UPSTREAM = [
    # pair, expected where, expected layer, words the detail must hold
    ("alexnet_relu/pair.toml", "inside", "classifier",
     ["wired differently", "torch's classifier.2 (ReLU) takes what classifier.1 (Linear) returns",
      "its paddle counterpart classifier.1 what classifier.0 returns"]),
    ("fed_differently/pair.toml", "inputs", "", ["given different inputs", "argument 0", "forward_paddle"]),
    pytest.param("bert_bugs/gelu.toml", "forward", "bert.encoder.layer.0.intermediate.intermediate_act_fn",
                 ["inside bert.encoder.layer.0.intermediate (BertIntermediate)", "NewGELUActivation",
                  "the input of bert.encoder.layer.0.output.dense",
                  "the output of bert.encoder.layer.0.intermediate.dense, agrees"], marks=needs_bert_libs),
    pytest.param("bert_bugs/scale.toml", "inside", "bert.encoder.layer.0.attention.self",
                 ["inside bert.encoder.layer.0.attention.self (BertSdpaSelfAttention)", "3 submodule calls agree",
                  "the input of bert.encoder.layer.0.attention.output.dense"], marks=needs_bert_libs),
]


@pytest.mark.e2e
@pytest.mark.parametrize("toml, where, layer, words", UPSTREAM)
def test_the_module_whose_forward_made_a_differing_input_is_named(session, toml, where, layer, words):
    """Once: a GELU module inside HF's BertIntermediate blamed on BertOutput, an attention scaled by the
    hidden size on attention.output, a moved ReLU and a model fed differently on 'a functional operation'."""
    results, outcome = run_and_locate(session, PAIRS / toml, ["forward"])
    found = outcome.finding
    assert found is not None and not results[0].passed, outcome.notes
    assert (found.where, found.layer) == (where, layer), found.detail
    for w in words:
        assert w in found.detail, found.detail
    assert "not a module" not in found.detail
    assert found.path and found.path[0]["module"] == "(model)"


ALIGNED = [
    ("none", transformer_pair, ALL),
    ("accumulate_both", transformer_pair, ALL),
    ("adam_conv_bias_before_bn", cnn_pair, ["forward", "backward"]),
]


@pytest.mark.e2e
@pytest.mark.parametrize("bug, make, checks", ALIGNED, ids=[a[0] for a in ALIGNED])
def test_aligned_pair_reports_nothing(session, tmp_path, bug, make, checks):
    results, outcome = run_and_locate(session, make(tmp_path, bug), checks)
    assert all(r.passed for r in results), [(r.name, [f"{k.key}: {k.reason}" for k in r.failing][:3]) for r in results]
    assert outcome.finding is None, outcome.finding.detail


@pytest.mark.e2e
def test_cli_reports_the_path_and_a_clean_run_stays_clean(make_pair, tmp_path):
    """End to end: a failing run names the layer in report.json and prints the tree; the same pair
    without the bug, with --locate, reports no divergence."""
    bad = transformer_pair(tmp_path, "ln_eps")
    out = tmp_path / "bad"
    proc = cli("run", bad, "--out", out, "--checks", "forward")
    assert proc.returncode == 1, proc.stderr
    div = report(out)["first_divergence"]
    assert (div["check"], div["where"], div["layer"]) == ("forward", "forward", "blocks.1.norm")
    assert "blocks.1 (TorchBlock)" in proc.stdout and "norm (LayerNorm)" in proc.stdout
    good = transformer_pair(tmp_path, "none")
    out = tmp_path / "good"
    proc = cli("run", good, "--out", out, "--checks", "forward,backward", "--locate")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads((out / "report.json").read_text())["first_divergence"] is None
