"""Checks on real batches ([data] source): every check takes its batches from one side's own loader,
made once there and sent to both; the metric runs over the whole eval split; and bad data input
ends the run as a worker failure, named, never a hang."""

import numpy as np
import pytest

from conftest import cli, pair_folder, report
from harness.checks import outputs, training
from harness.config import parse
from harness.session import RunOptions, Session

pytestmark = pytest.mark.e2e  # every test here starts workers

PAIR = '''
import itertools

import numpy as np
import paddle
import torch

BUG = "{bug}"
SIZES = {{"train": 12, "eval": 26}}
VOCAB = 50


def rows(split):
    rng = np.random.default_rng(("train", "eval").index(split))
    return [(rng.integers(1, VOCAB, size=6).astype(np.int64), int(rng.integers(0, 2))) for _ in range(SIZES[split])]


class TorchNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(VOCAB, 8)
        self.fc = torch.nn.Linear(8, 2)

    def forward(self, ids):
        return self.fc(self.emb(ids).mean(1))


class PaddleNet(paddle.nn.Layer):
    def __init__(self):
        super().__init__()
        self.emb = paddle.nn.Embedding(VOCAB, 8)
        self.fc = paddle.nn.Linear(8, 2)

    def forward(self, ids):
        return self.fc(self.emb(ids).mean(1))


def build_torch():
    return TorchNet()


def build_paddle():
    return PaddleNet()


class Rows:
    def __init__(self, split):
        self.rows = rows(split)

    def __len__(self):
        return len(self.rows)


class TorchRows(Rows, torch.utils.data.Dataset):
    def __getitem__(self, i):
        x, y = self.rows[i]
        if BUG == "paddle_tensor":
            return {{"input_ids": paddle.to_tensor(x), "labels": y}}
        if BUG == "object":
            return {{"input_ids": x, "labels": y, "meta": object()}}
        return {{"input_ids": torch.tensor(x), "labels": y}}


def data_torch(split):
    if BUG == "endless":
        return ({{"input_ids": torch.tensor(np.full((4, 6), i % VOCAB)), "labels": torch.zeros(4, dtype=torch.int64)}}
                for i in itertools.count())
    return torch.utils.data.DataLoader(TorchRows(split), batch_size=4)


class PaddleRows(Rows, paddle.io.Dataset):
    def __getitem__(self, i):
        if BUG == "raise" and i == 3:
            raise ValueError("row 3 is broken")
        x, y = self.rows[i]
        return {{"input_ids": x, "labels": np.int64(1 - y if BUG == "flip" else y)}}


def data_paddle(split):
    return paddle.io.DataLoader(PaddleRows(split), batch_size=4)
'''
TOML = '[data]\nlabels = ["labels"]\n'


def _toml(root, bug, checks=None, data=""):
    top = f"checks = {checks!r}\n".replace("'", '"') if checks else ""
    return pair_folder(root, bug, PAIR.format(bug=bug), top + TOML + data)


def test_every_check_runs_on_torchs_batches_and_the_metric_on_the_whole_eval_split(tmp_path):
    proc = cli("run", _toml(tmp_path, "none"), "--out", tmp_path / "out", timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rep = report(tmp_path / "out")
    assert [c["name"] for c in rep["checks"]] == ["data", "forward", "metric", "loss", "lr", "backward", "train"]
    notes = {c["name"]: c.get("notes", []) for c in rep["checks"]}
    assert "over the whole eval split of data_torch('eval'): 7 batches" in notes["metric"]  # 26 items, 4 a batch
    # said, not padded: the train split has 3 batches
    assert "[train] iters asked for 5 steps, data_torch('train') has 3 batches: 3 steps ran" in notes["backward"]
    assert len([k for k in rep["checks"][5]["keys"] if k["key"].startswith("loss_")]) == 3


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    root = tmp_path_factory.mktemp("source")
    s = Session(parse.load(_toml(root, "flip", ["metric", "backward"])),
                RunOptions(out_dir=root / "out"), progress=lambda m: None)
    s.start()
    yield s
    s.close()


def test_the_source_side_makes_the_batches_for_both(session, tmp_path):
    # paddle's labels are flipped: torch's batches score one accuracy, paddle's another, and either
    # way both models see the same batches (aligned)
    accuracy = {}
    for source in ("torch", "paddle"):
        session.use(parse.load(_toml(tmp_path / source, "flip", ["metric", "backward"], f'source = "{source}"\n')))
        assert session.data.source == source
        metric = outputs.metric(session)
        assert metric.passed, metric.why
        assert training.backward(session, write=False).passed
        saved = np.load(session.writer.out_dir / "metric_torch.npy", allow_pickle=True).item()
        accuracy[source] = float(saved["accuracy"])
    assert accuracy["torch"] != accuracy["paddle"], accuracy
    # a paddle loader that raises is never read when the batches are torch's
    session.use(parse.load(_toml(tmp_path / "raise", "raise", ["metric", "backward"], 'source = "torch"\n')))
    assert outputs.metric(session).passed


def test_a_shorter_or_endless_source_is_bounded_by_what_the_checks_need(tmp_path):
    toml = _toml(tmp_path, "endless", ["metric", "backward"], "eval_batches = 3\n")
    proc = cli("run", toml, "--out", tmp_path / "out", timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    notes = report(tmp_path / "out")["checks"][0]["notes"]
    assert any(n.startswith("over the first 3 batches of data_torch('eval') ([data] eval_batches): it has no len()")
               for n in notes), notes


@pytest.mark.parametrize("bug,needle", [
    ("raise", "data_paddle('train') item 3 raised ValueError: row 3 is broken"),
    ("paddle_tensor", "field 'input_ids' is <paddle.to_tensor(...): not loaded in the torch worker>"),
    ("object", "field 'meta' is an object, which cannot cross to the coordinator"),
])
def test_bad_data_is_a_worker_failure_named_with_its_traceback(tmp_path, bug, needle):
    proc = cli("run", _toml(tmp_path, bug, ["data"]), "--out", tmp_path / "out", timeout=300)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert needle in proc.stderr, proc.stderr
    if bug == "raise":  # the user's own file and line
        assert 'pair.py", line' in proc.stderr and "in __getitem__" in proc.stderr
