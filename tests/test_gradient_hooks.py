"""A forward that registers a gradient hook (PaDiff's simplenet4 and single-step tests): every check
runs it, the evaluation checks with autograd on only for such a model, and a hook that changes the
gradient on one side is caught at backward."""

import pytest

from conftest import check, cli, report

pytestmark = pytest.mark.e2e  # every test here starts workers

HOOKED = """
import numpy as np
import paddle, torch


class TorchNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear1 = torch.nn.Linear(16, 16)
        self.linear2 = torch.nn.Linear(16, 4)

    def forward(self, x):
        h = self.linear1(x)
        h.register_hook(lambda g: g)
        return self.linear2(torch.relu(h))


class PaddleNet(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.linear1 = paddle.nn.Linear(16, 16)
        self.linear2 = paddle.nn.Linear(16, 4)

    def forward(self, x):
        h = self.linear1(x)
        h.register_hook(lambda g: {scale} * g)
        return self.linear2(paddle.nn.functional.relu(h))


def build_torch(): return TorchNet()
def build_paddle(): return PaddleNet()
def make_batch(rng, step):
    return {{"x": rng.standard_normal((8, 16), dtype=np.float32), "label": rng.integers(0, 4, size=(8,))}}
"""


def test_a_forward_registering_gradient_hooks_runs_every_check(make_pair, tmp_path):
    """Once exit 3 at the forward check: "cannot register a hook on a tensor that doesn't require gradient"."""
    toml = make_pair(HOOKED.format(scale=1.0), '[data]\ninputs = ["x"]\n[train]\ntrain_iters = 5\n', name="hooked")
    proc = cli("run", toml, "--out", tmp_path / "o", "--locate")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rep = report(tmp_path / "o")
    assert [c["name"] for c in rep["checks"]] == ["forward", "metric", "loss", "lr", "backward", "train"]


def test_a_hook_doubling_the_gradient_on_one_side_is_caught_at_backward(make_pair, tmp_path):
    toml = make_pair(HOOKED.format(scale=2.0), '[data]\ninputs = ["x"]\n', name="doubled")
    proc = cli("run", toml, "--out", tmp_path / "o", "--checks", "forward,loss,backward")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    rep = report(tmp_path / "o")
    assert check(rep, "forward")["passed"] and check(rep, "loss")["passed"] and not check(rep, "backward")["passed"]
    div = rep["first_divergence"]
    assert div["check"] == "backward" and div["step"] == 0 and div["layer"].startswith("linear1")


GRAD_SEEN = """
import numpy as np
import torch

SEEN = []


class Net(torch.nn.Linear):
    def forward(self, x):
        SEEN.append(torch.is_grad_enabled())
        h = super().forward(x)
        if HOOK:
            h.register_hook(lambda g: g)
        return h


HOOK = {hook}
def build_torch(): return Net(4, 3)
def build_paddle(): pass
def make_batch(rng, step): return {{"x": rng.standard_normal((2, 4), dtype=np.float32), "label": np.zeros(2, np.int64)}}
"""


@pytest.mark.parametrize("hook", [False, True])
def test_the_evaluation_checks_hold_no_activations_unless_the_forward_needs_autograd(make_pair, tmp_path, hook):
    """No autograd in the forward, metric and loss checks (BERT-base would hold every activation
    for a backward that never comes), except for a model whose forward fails without it."""
    import numpy as np

    from backends.torch.runner import Runner
    from harness.config import parse
    from harness.workers.protocol import Op

    toml = make_pair(GRAD_SEEN.format(hook=hook), '[data]\ninputs = ["x"]\n', name=f"seen_{hook}")
    runner = Runner({"threads": 1, "device": "cpu"})
    runner.handle(Op.SETUP, {"cfg": parse.load(toml).to_wire()})
    batch = {"x": np.ones((2, 4), np.float32), "label": np.zeros(2, np.int64)}
    runner.handle(Op.FORWARD, {"batch": batch})
    runner.handle(Op.METRIC, {"batches": [batch]})
    runner.handle(Op.LOSS, {"batch": batch})
    # without a hook: three forwards, none with autograd; with one: the first fails without it, the rest have it
    assert runner.pair.SEEN == ([False, True, True, True] if hook else [False, False, False])
