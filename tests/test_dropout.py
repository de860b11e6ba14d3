"""Dropout: train-mode steps run with every dropout of both frameworks at p 0 (modules, functional
dropout, attention-probability dropout), and the dropouts themselves are compared pair by pair, so
a correct port with dropout is aligned and a probability or mode that differs is still caught."""

import importlib.util
import os

import pytest

from conftest import PAIRS, check, cli, report

pytestmark = pytest.mark.e2e

HAVE_BERT_LIBS = all(importlib.util.find_spec(m) is not None for m in ("transformers", "paddlenlp"))

MLP = '''
import numpy as np
import paddle
import torch

def build_torch():
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Dropout(0.1), torch.nn.Linear(16, 3))

def build_paddle():
    return paddle.nn.Sequential(paddle.nn.Linear(8, 16), paddle.nn.ReLU(), paddle.nn.Dropout({paddle_dropout}),
                                paddle.nn.Linear(16, 3))

def make_batch(rng, step):
    return {{"x": rng.standard_normal((8, 8), dtype=np.float32), "label": rng.integers(0, 3, size=(8,), dtype=np.int64)}}
'''
TOML = '[data]\ninputs = ["x"]\n[optimizer]\nname = "adam"\nlr = 0.01\n[train]\ntrain_iters = 10\n'


@pytest.mark.parametrize("paddle_dropout, failing, reason", [
    ("0.1", [], None),
    ("0.2", ["train"], "p 0.1 (upscale_in_train) vs paddle 2 p 0.2 (upscale_in_train)"),
    # downscale_in_infer also scales eval-mode outputs by 1 - p: forward and backward see that too
    ('0.1, mode="downscale_in_infer"', ["forward", "backward", "train"], "vs paddle 2 p 0.1 (downscale_in_infer)"),
], ids=["same", "probability", "mode"])
def test_dropouts_are_compared_while_off(make_pair, tmp_path, paddle_dropout, failing, reason):
    aligned = not failing
    toml = make_pair(MLP.format(paddle_dropout=paddle_dropout), TOML, name="drop")
    proc = cli("run", toml, "--checks", "forward,backward,train", "--out", tmp_path / "o")
    assert proc.returncode == (0 if aligned else 1), proc.stdout + proc.stderr
    rep = report(tmp_path / "o")
    train = check(rep, "train")
    key = next(k for k in train["keys"] if k["key"] == "dropout:2")
    assert key["passed"] == aligned
    if not aligned:
        assert reason in key["reason"], key["reason"]
        assert [c["name"] for c in rep["checks"] if not c["passed"]] == failing
    if failing == ["train"]:  # the losses agree: dropout was off, only its probability differs
        assert all(k["passed"] for k in train["keys"] if k["key"].startswith("loss_"))


@pytest.mark.skipif(not HAVE_BERT_LIBS and not os.environ.get("REPROD_REQUIRE_EXAMPLES"),
                    reason="needs the examples extra + paddlenlp (CI installs them and sets "
                           "REPROD_REQUIRE_EXAMPLES=1, which turns this skip into a failure)")
def test_bert_with_dropout_is_aligned_in_every_check(tmp_path):
    proc = cli("run", PAIRS / "bert_dropout" / "pair.toml", "--out", tmp_path / "o", "--locate", timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rep = report(tmp_path / "o")
    assert rep["aligned"] and rep["first_divergence"] is None
    keys = [k for k in check(rep, "train")["keys"] if k["key"].startswith("dropout:")]
    # hidden dropouts and HF's functional attention dropout (sdpa) paired with paddle's
    assert len(keys) == 8 and "dropout:bert.encoder.layer.0.attention.self" in {k["key"] for k in keys}
