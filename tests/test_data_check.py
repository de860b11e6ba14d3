"""The data check: each side's own data (data_torch/data_paddle) compared as the guide's Step 2 does,
each pipeline difference named with its field and position; a seeded shuffle never a false alarm."""

import numpy as np
import pytest

from conftest import cli, pair_folder, report
from harness.checks import data
from harness.checks.data import batch_plan, item_indices
from harness.checks.datadiff import count_reason, judge_field, shape_reason
from harness.config import parse
from harness.session import RunOptions, Session
from harness.verdict.tolerance import Tolerance

TOL = Tolerance(1e-6)


# ------------------------------------------------------------------ judging, without workers
def test_padding_to_a_fixed_length_is_told_from_padding_to_the_longest():
    torch_ids = np.array([[5, 6, 7, 0], [8, 9, 0, 0]])
    paddle_ids = np.concatenate([torch_ids, np.zeros((2, 124), np.int64)], axis=1)
    shapes = {"torch": [(2, 4), (2, 7), (2, 5)], "paddle": [(2, 128)] * 3}
    text = judge_field("eval.batch_0.input_ids", torch_ids, paddle_ids, TOL, shapes).reason
    assert text.startswith("shape (2, 4) vs (2, 128): paddle pads to 128 in every batch (a max length), "
                           "torch to the longest in the batch"), text


def test_truncation_says_where_each_side_stops():
    torch_ids = np.array([101, 7, 8, 9, 10, 11, 102])
    paddle_ids = np.array([101, 7, 8, 9, 102])
    text = shape_reason(torch_ids, paddle_ids)
    assert "the first 4 positions agree, then paddle's stops at 5: paddle truncates to 5" in text, text


def test_drop_last_is_named_with_the_last_batch():
    t = {"batches": 219, "sizes": np.array([4] * 218 + [3])}
    p = {"batches": 218, "sizes": np.array([4] * 218)}
    assert count_reason(t, p) == ("219 batches vs 218, last batch 3 vs none: paddle drops the last partial batch "
                                  "(drop_last)")
    assert count_reason({"batches": 8, "sizes": np.array([4] * 8)}, {"batches": 16, "sizes": np.array([2] * 16)}) == \
        "8 batches vs 16: batch size 4 vs 2"


def test_values_exact_offsets_and_channels():
    assert judge_field("train.item_17.labels", np.int64(1), np.int64(0), TOL).reason == "1 vs 0"
    labels = np.array([0, 1, 1, 0])
    assert "paddle = torch +1 in every value" in judge_field("k", labels, labels + 1, TOL).reason
    ids = np.array([[101, 2054, 2003], [101, 7, 8]])
    other = ids.copy()
    other[0, 1] = 100
    assert judge_field("k", ids, other, TOL).reason == "1 of 6 values differ, first at [0, 1]: 2054 vs 100"
    image = np.random.default_rng(0).random((2, 3, 4, 4), dtype=np.float32)
    mean, swapped = np.array([0.485, 0.456, 0.406]), np.array([0.406, 0.456, 0.485])
    a = (image - mean[:, None, None].astype(np.float32))
    b = (image - swapped[:, None, None].astype(np.float32))
    text = judge_field("k", a, b, TOL).reason
    assert "channels 0, 2 differ" in text and "1 agrees" in text and "mean/std" in text, text


def test_strings_compare_exactly_and_floats_by_the_data_tolerance():
    assert judge_field("k", np.array(["a b", "c"]), np.array(["a b", "c"]), TOL).passed
    assert judge_field("k", np.array(["a b", "c"]), np.array(["a b", "c"], dtype="<U9"), TOL).passed  # text, any width
    bad = judge_field("k", np.array(["Hello", "c"]), np.array(["hello", "c"]), TOL)
    assert not bad.passed and bad.reason == "1 of 2 values differ, first at [0]: 'Hello' vs 'hello'"
    x = np.ones(8, np.float32)
    assert judge_field("k", x, x + 5e-7, TOL).passed
    assert not judge_field("k", x, x + 1e-3, TOL).passed
    assert not judge_field("k", np.int64(3), np.int32(3), TOL).passed  # dtype as in every diff


def test_items_are_seeded_within_both_lengths_with_the_first_and_last():
    t, p = {"length": 100, "kind": "loader"}, {"length": 90, "kind": "dataset"}
    picked = item_indices(t, p, count=8, seed=0, split="train")
    assert len(picked) == 8 and picked[0] == 0 and picked[-1] == 89 and picked == sorted(set(picked))
    assert picked == item_indices(t, p, count=8, seed=0, split="train")
    assert picked != item_indices(t, p, count=8, seed=1, split="train")
    assert item_indices(t, {"length": None, "kind": "iterable"}, count=8, seed=0, split="train") == []


def _desc(order, sequential, sampler="RandomSampler"):
    return {"order": order, "sequential": sequential, "sampler": sampler}


def test_a_shuffled_loader_compares_the_same_items_and_says_the_order_was_not():
    how, note = batch_plan(_desc([[3, 1], [0, 2]], False), _desc([[2, 0], [1, 3]], False))
    assert how == "collate" and "random order (RandomSampler, RandomSampler)" in note and "not compared" in note
    assert batch_plan(_desc([[0, 1], [2, 3]], True), _desc([[0, 1]], True)) == ("pass", None)  # drop_last
    how, note = batch_plan(_desc([[3, 1]], False), _desc(None, None))
    assert how is None and note.startswith("batches not compared: torch's loader draws its items in a random order")


# ------------------------------------------------------------------ with workers
PAIR = '''
import numpy as np
import paddle
import torch

BUG = "{bug}"
SIZES = {{"train": 22, "eval": 11}}


def rows(split):
    rng = np.random.default_rng(("train", "eval").index(split))
    return [(rng.integers(1, 50, size=int(rng.integers(3, 9))).astype(np.int64), int(rng.integers(0, 2)))
            for _ in range(SIZES[split])]


def pad(items, width=None):
    width = width or max(len(x) for x, _ in items)
    ids = np.zeros((len(items), width), np.int64)
    for r, (x, _) in enumerate(items):
        ids[r, :len(x)] = x
    return ids, np.array([y for _, y in items], np.int64)


class Rows:
    def __init__(self, split):
        self.rows = rows(split)

    def __len__(self):
        return len(self.rows)


class TorchRows(Rows, torch.utils.data.Dataset):
    def __getitem__(self, i):
        x, y = self.rows[i]
        return {{"input_ids": x, "labels": y}}


def data_torch(split):
    def collate(items):
        ids, y = pad([(i["input_ids"], i["labels"]) for i in items])
        return {{"input_ids": torch.tensor(ids), "labels": torch.tensor(y)}}
    return torch.utils.data.DataLoader(TorchRows(split), batch_size=4, shuffle=split == "train" and BUG == "shuffle",
                                       collate_fn=collate)


class PaddleRows(Rows, paddle.io.Dataset):
    def __getitem__(self, i):
        x, y = self.rows[i]
        return x[:5] if BUG == "truncate" else x, y + (1 if BUG == "label" else 0)


def data_paddle(split):
    def collate(items):
        return pad(items, 12 if BUG == "pad" else None)
    return paddle.io.DataLoader(PaddleRows(split), batch_size=3 if BUG == "batch_size" else 4,
                                shuffle=split == "train" and BUG == "shuffle",
                                drop_last=split == "eval" and BUG == "drop_last", collate_fn=collate)
'''
TOML = '[data]\nfields = ["input_ids", "labels"]\n'


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    cfg = parse.load(pair_folder(root, "none", PAIR.format(bug="none"), 'checks = ["data"]\n' + TOML))
    s = Session(cfg, RunOptions(out_dir=root / "out"), progress=lambda m: None)
    s.start()
    yield s
    s.close()


def _check(session, tmp_path, bug: str):
    session.use(parse.load(pair_folder(tmp_path, bug, PAIR.format(bug=bug), 'checks = ["data"]\n' + TOML)))
    return data.data(session)


def _first(result) -> str:
    return f"{result.failing[0].key}: {result.failing[0].reason}" if result.failing else ""


@pytest.mark.e2e
@pytest.mark.parametrize("bug,expected", [
    ("label", "train.item_0.labels: 1 vs 2"),
    ("pad", "train.batch_0.input_ids: shape (4, 8) vs (4, 12): paddle pads to 12 in every batch (a max length), "
            "torch to the longest in the batch"),
    ("drop_last", "eval.batches: 3 batches vs 2, last batch 3 vs none: paddle drops the last partial batch (drop_last)"),
    ("truncate", "train.item_0.input_ids: shape (8,) vs (5,): the first 5 positions agree, then paddle's stops at 5: "
                 "paddle truncates to 5 (a max length), torch keeps 8"),
    ("batch_size", "train.batches: 6 batches vs 8: batch size 4 vs 3"),
])
def test_each_pipeline_difference_is_named_with_field_and_position(session, tmp_path, bug, expected):
    result = _check(session, tmp_path, bug)
    assert not result.passed
    assert _first(result).startswith(expected), _first(result)


@pytest.mark.e2e
def test_aligned_pipelines_and_a_seeded_shuffle_pass(session, tmp_path):
    same = _check(session, tmp_path, "none")
    assert same.passed, _first(same)
    names = {k.key for k in same.keys}
    assert {"train.length", "train.batches", "train.batch_sizes", "train.item_21.labels", "eval.batch_2.input_ids"} <= names
    assert sum(k.key.startswith("train.item_") and k.key.endswith(".labels") for k in same.keys) == 8
    assert sum(k.key.startswith("train.batch_") and k.key.endswith(".labels") for k in same.keys) == 5
    shuffled = _check(session, tmp_path, "shuffle")
    assert shuffled.passed, _first(shuffled)
    assert any("train: torch's and paddle's loaders draw their items in a random order" in n for n in shuffled.notes)
    assert {k.key for k in shuffled.keys} == names  # compared on the same items, nothing silently skipped


ITERABLES = '''
import numpy as np
import paddle
import torch


def _batches(n):
    rng = np.random.default_rng(0)
    return [(rng.standard_normal((2, 3)).astype(np.float32), rng.integers(0, 4, 2)) for _ in range(n)]


def data_torch(split):
    return ((torch.tensor(x), torch.tensor(y)) for x, y in _batches(4))  # a generator: no len, no items


def data_paddle(split):
    return [(paddle.to_tensor(x), paddle.to_tensor(y)) for x, y in _batches({paddle_batches})]
'''


@pytest.mark.e2e
def test_plain_iterables_write_step_2s_artifacts(tmp_path):
    toml = pair_folder(tmp_path, "it", ITERABLES.format(paddle_batches=4), 'checks = ["data"]\n')
    proc = cli("run", toml, "--out", tmp_path / "out", timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rep = report(tmp_path / "out")
    check = rep["checks"][0]
    assert check["name"] == "data" and {k["key"] for k in check["keys"]} >= {"train.batch_3.0", "eval.batch_0.1"}
    assert any("numbers of batches not compared: torch's generator has no len()" in n for n in check["notes"])
    assert any("4 batches compared of the 5 asked" in n for n in check["notes"])
    saved = np.load(tmp_path / "out" / "data_torch.npy", allow_pickle=True).item()  # reprod_log's format
    assert saved["train.batch_0.0"].shape == (2, 3)
    log = (tmp_path / "out" / "data_diff.log").read_text()
    assert "train.batch_0.0: " in log and "diff check passed" in log
    assert rep["weight_map"] is None  # the data check alone builds no model


# ------------------------------------------------------------------ configuration, before any worker
MAKE_BATCH_ONLY = '''
import numpy as np

def build_torch(): pass
def build_paddle(): pass
def make_batch(rng, step):
    return {"x": np.zeros((2, 3), np.float32), "label": np.zeros(2, np.int64)}
'''


def _checked(cfg) -> tuple:
    """The checks and the batch source a run of cfg would have, its data worker closed after."""
    from harness.pair.batches import BatchSource
    from harness.session import checked_data

    with BatchSource(cfg) as data:
        return checked_data(data, cfg).checks, data.source


@pytest.mark.e2e  # starts a process (the data worker, or the CLI)
@pytest.mark.parametrize("body,needle", [
    ('checks = ["data"]\n', "checks name data, but"),
    ('[data]\nsource = "paddle"\n', 'source = "paddle" takes the batches from data_paddle(split)'),
    ('[data]\nfields = ["ids", "ids"]\n', "data.fields: expected distinct non-empty names"),
    ('[data]\nsource = "tf"\n', "'tf' is not one of make_batch, torch, paddle"),
])
def test_data_settings_a_pair_cannot_meet_are_usage_errors(tmp_path, body, needle):
    from harness.errors import HarnessError

    with pytest.raises(HarnessError) as info:
        _checked(parse.load(pair_folder(tmp_path, "p", MAKE_BATCH_ONLY, body)))
    assert info.value.exit_code == 2 and needle in str(info.value), str(info.value)


@pytest.mark.e2e  # starts a process (the data worker, or the CLI)
def test_data_runs_first_only_where_the_pair_defines_it(tmp_path):
    checks, _ = _checked(parse.load(pair_folder(tmp_path, "p", MAKE_BATCH_ONLY)))
    assert checks == ("forward", "metric", "loss", "lr", "backward", "train")
    own = MAKE_BATCH_ONLY + "\ndef data_torch(split): return []\ndef data_paddle(split): return []\n"
    checks, source = _checked(parse.load(pair_folder(tmp_path, "q", own)))
    assert checks[0] == "data" and "init" not in checks and source == "make_batch"
    one_sided = MAKE_BATCH_ONLY + "\ndef data_torch(split): return []\n"
    with pytest.raises(Exception, match="defines data_torch but not data_paddle"):
        _checked(parse.load(pair_folder(tmp_path, "r", one_sided)))
