"""The metric check (guide step 2) and the train check (guide step 5)."""

import numpy as np
import pytest

from backends.metrics import count_metric
from conftest import check, cli, report
from harness.checks import outputs, training
from harness.config import parse
from harness.report.artifacts import save_npy
from harness.session import RunOptions, Session


def test_count_metric_by_hand():
    pred, lab = np.array([0, 1, 1, 2, 2, 2]), np.array([0, 1, 2, 2, 2, 0])
    assert count_metric("accuracy", pred, lab, 1)["accuracy"] == pytest.approx(4 / 6)
    # per class F1: c0 2*1/(2+0+1)=2/3, c1 2/(2+1+0)=2/3, c2 2*2/(4+1+1)=2/3
    assert count_metric("f1", pred, lab, 1)["f1_macro"] == pytest.approx(2 / 3)
    top = np.array([[0, 1], [2, 1], [0, 1]])
    assert count_metric("topk", top, np.array([1, 0, 1]), 2)["top2_accuracy"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="one prediction per label"):
        count_metric("accuracy", np.zeros(4), np.zeros(3), 1)


@pytest.fixture(scope="module")
def mlp_session(tmp_path_factory):
    s = Session(parse.load_zoo("mlp"), RunOptions(out_dir=tmp_path_factory.mktemp("m")), progress=lambda m: None)
    s.start()
    yield s
    s.close()


@pytest.mark.e2e
@pytest.mark.parametrize("kind,key", [("accuracy", "accuracy"), ("topk", "top3_accuracy"), ("f1", "f1_macro")])
def test_builtin_metrics_aligned(mlp_session, kind, key):
    result = outputs.metric(mlp_session, overrides={"metric": {"kind": kind, "k": 3}})
    assert result.passed and [k.key for k in result.keys] == [key]
    assert result.keys[0].count == 1


@pytest.mark.e2e
def test_train_check_artifacts(mlp_session):
    result = training.train(mlp_session)
    assert result.passed, [f"{k.key}: {k.reason}" for k in result.failing]
    names = [k.key for k in result.keys]
    assert names[: mlp_session.cfg.train.train_iters] == [f"loss_{i}" for i in range(mlp_session.cfg.train.train_iters)]
    assert "metric_accuracy" in names
    out = mlp_session.writer.out_dir
    assert (out / "train_curve.png").stat().st_size > 10_000
    assert (out / "train_align_torch.npy").exists() and (out / "train_align_diff.log").exists()


WRONG_METRIC = '''
import paddle
from backends.zoo.mlp.pair import build_paddle, build_torch, make_batch  # noqa: F401

def metric_torch(output, batch):
    return {"acc": float((output.argmax(-1) == batch["label"]).float().mean())}

def metric_paddle(output, batch):  # the port counts a sample right when the label is *not* the argmax
    return {"acc": float((output.argmax(-1) != batch["label"]).astype("float32").mean())}
'''

TRAIN_ONLY_DROPOUT = '''
import paddle, torch
from backends.zoo.mlp import pair as mlp
from backends.zoo.mlp.pair import build_torch, make_batch  # noqa: F401

class DroppingMLP(mlp.PaddleMLP):
    def __init__(self):
        super().__init__()
        self.drop = paddle.nn.Dropout(0.5)  # only active in train mode

    def forward(self, x):
        return self.head(self.drop(self.act(self.fc2(self.act(self.fc1(x))))))

def build_paddle():
    return DroppingMLP()
'''


@pytest.mark.e2e
def test_wrong_pair_metric_fails_metric(make_pair, tmp_path):
    toml = make_pair(WRONG_METRIC, '[data]\ninputs = ["x"]\n[metric]\nkind = "pair"\n', name="wrong_metric")
    proc = cli("run", toml, "--out", tmp_path / "o", "--checks", "forward,metric")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    rep = report(tmp_path / "o")
    assert check(rep, "forward")["passed"] and not check(rep, "metric")["passed"]


NO_LABELS = """
import numpy as np
import paddle, torch

def build_torch(): return torch.nn.Linear(4, 4)
def build_paddle(): return paddle.nn.Linear(4, 4)
def loss_torch(out, batch): return ((out - batch["x"]) ** 2).mean()
def loss_paddle(out, batch): return ((out - batch["x"]) ** 2).mean()
def metric_torch(out, batch): return {"reconstruction": ((out - batch["x"]) ** 2).mean()}
def metric_paddle(out, batch): return {"reconstruction": ((out - batch["x"]) ** 2).mean()}
def make_batch(rng, step): return {"x": rng.standard_normal((3, 4), dtype=np.float32)}
"""


@pytest.mark.e2e
def test_a_pair_without_labels_runs_every_check_with_its_own_loss_and_metric(make_pair, tmp_path):
    """An autoencoder: no label key, its own loss and metric; the metric check once crashed in the worker."""
    toml = make_pair(NO_LABELS, '[data]\nlabels = []\n[loss]\nkind = "pair"\n[metric]\nkind = "pair"\n'
                                '[train]\ntrain_iters = 5\n', name="no_labels")
    proc = cli("run", toml, "--out", tmp_path / "o")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rep = report(tmp_path / "o")
    assert [c["name"] for c in rep["checks"]] == ["forward", "metric", "loss", "lr", "backward", "train"]
    assert [k["key"] for k in check(rep, "metric")["keys"]] == ["reconstruction"]


@pytest.mark.e2e
def test_train_mode_difference_fails_train_only(make_pair, tmp_path):
    toml = make_pair(TRAIN_ONLY_DROPOUT, '[data]\ninputs = ["x"]\n[train]\ntrain_iters = 10\n', name="dropout")
    proc = cli("run", toml, "--out", tmp_path / "o")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    rep = report(tmp_path / "o")
    failed = [c["name"] for c in rep["checks"] if not c["passed"]]
    assert failed == ["train"], failed
    assert any("dropout" in n for n in check(rep, "train").get("notes", []))


@pytest.mark.e2e
def test_benchmark_file(tmp_path):
    save_npy(tmp_path / "bench.npy", {"accuracy": np.array(0.99)})  # far above a random-label model
    proc = cli("run", "--zoo", "mlp", "--checks", "train", "--benchmark", tmp_path / "bench.npy", "--out", tmp_path / "o")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    bench = [k for k in check(report(tmp_path / "o"), "train")["keys"] if k["key"] == "benchmark:accuracy"]
    assert bench and not bench[0]["passed"]


BN_MOMENTUM_CONFUSED = '''
import paddle
from backends.zoo.cnn import pair as cnn
from backends.zoo.cnn.pair import build_torch, make_batch  # noqa: F401

def build_paddle():
    model = cnn.PaddleCNN()
    model.bn1 = paddle.nn.BatchNorm2D(8, momentum=0.1)  # torch's 0.1 copied literally: paddle means 0.9
    return model
'''


@pytest.mark.e2e
def test_batchnorm_momentum_mixup_fails_train_on_running_means(make_pair, tmp_path):
    toml = make_pair(BN_MOMENTUM_CONFUSED, '[data]\ninputs = ["image"]\n[train]\ntrain_iters = 5\n', name="bnmom")
    proc = cli("run", toml, "--out", tmp_path / "o", "--checks", "forward,loss,backward,train")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    rep = report(tmp_path / "o")
    assert [c["name"] for c in rep["checks"] if not c["passed"]] == ["train"]
    failing = [k["key"] for k in check(rep, "train")["keys"] if not k["passed"]]
    assert "buffer:bn1.running_mean" in failing and "buffer:bn2.running_mean" not in failing
