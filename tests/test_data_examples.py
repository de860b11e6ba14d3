"""The data examples as a user runs them: BERT-SST2's Step 2 (HF's tokenizer and collator against
PaddleNLP's) aligned in one command with every later check on its real batches, and each classic
pipeline bug caught at the data check with its field and position; an image pipeline whose
normalize takes its mean and std in the other channel order."""

import dataclasses
import importlib.util
import os

import numpy as np
import pytest

from conftest import ROOT, check, cli, pair_folder, report
from harness.checks import data
from harness.config import parse
from harness.session import RunOptions, Session

pytestmark = pytest.mark.e2e  # every test here starts workers

HAVE_BERT_LIBS = all(importlib.util.find_spec(m) is not None for m in ("transformers", "paddlenlp"))
needs_bert_libs = pytest.mark.skipif(
    not HAVE_BERT_LIBS and not os.environ.get("REPROD_REQUIRE_EXAMPLES"),
    reason="needs the examples extra + paddlenlp (CI installs them and sets REPROD_REQUIRE_EXAMPLES=1, which "
           "turns this skip into a failure)")
BERT = ROOT / "examples" / "bert_sst2_data"
VISION = ROOT / "examples" / "vision_data"

# the example's module loaded under a name of its own, one of its settings changed: a worker serves
# several variants, and each must start from the example's own settings
VARIANT = '''
import importlib.util

_spec = importlib.util.spec_from_file_location("example_{name}", r"{path}")
example = importlib.util.module_from_spec(_spec)
example.__builtins__ = __builtins__  # loaded by hand, past the import system: it imports as this pair does
_spec.loader.exec_module(example)
example.{settings}
data_torch, data_paddle = example.data_torch, example.data_paddle
'''


def _variant(root, example, name: str, settings: str, toml_body: str):
    return parse.load(pair_folder(root, name, VARIANT.format(name=name, path=example / "pair.py", settings=settings),
                                  'checks = ["data"]\n' + toml_body))


@needs_bert_libs
def test_bert_sst2_step_2_and_its_metric_over_the_dev_split_in_one_command(tmp_path):
    proc = cli("run", BERT / "pair.toml", "--out", tmp_path / "o", timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rep = report(tmp_path / "o")
    assert [c["name"] for c in rep["checks"]] == ["data", "forward", "metric", "loss", "lr", "backward", "train"]
    keys = {k["key"] for k in check(rep, "data")["keys"]}
    assert {"eval.length", "eval.batches", "eval.batch_sizes", "train.item_31.labels", "eval.batch_4.attention_mask"} <= keys
    assert "over the whole eval split of data_torch('eval'): 6 batches" in check(rep, "metric")["notes"]


BERT_BUGS = [
    ("pad_to_max", 'PADDLE.update(pad_to_max=True)', "train.item_0.input_ids",
     "shape (16,) vs (64,): paddle pads axis 0 to 64, torch to 16 (padded with 0)"),
    ("max_len", 'PADDLE.update(max_len=16)', "train.item_8.input_ids",
     "shape (18,) vs (16,): the first 15 positions agree, then paddle's stops at 16: paddle truncates to 16 (a max "
     "length), torch keeps 18"),
    ("lower_case", 'PADDLE.update(lower_case=False)', "train.item_0.input_ids",
     "1 of 16 values differ, first at [1]: 8 vs 1"),
    ("drop_last", 'PADDLE.update(drop_last_eval=True)', "eval.batches",
     "6 batches vs 5, last batch 3 vs none: paddle drops the last partial batch (drop_last)"),
    ("label", 'PADDLE.update(label_offset=1)', "train.item_0.labels", "1 vs 2"),
]


@pytest.fixture(scope="module")
def bert_session(tmp_path_factory):
    root = tmp_path_factory.mktemp("bert")
    s = Session(_variant(root, BERT, "same", "PADDLE.update()", _data_section(BERT)), RunOptions(out_dir=root / "out"),
                progress=lambda m: None)
    s.start()
    yield s
    s.close()


def _data_section(example) -> str:
    """The example's own [data] table (its field names, its labels)."""
    text = (example / "pair.toml").read_text()
    return "[data]" + text.split("[data]", 1)[1].split("\n[", 1)[0] + "\n"


@needs_bert_libs
@pytest.mark.parametrize("name,settings,key,reason", BERT_BUGS, ids=[b[0] for b in BERT_BUGS])
def test_each_bert_pipeline_bug_is_caught_at_data_with_field_and_position(bert_session, tmp_path, name, settings,
                                                                          key, reason):
    bert_session.use(_variant(tmp_path, BERT, name, settings, _data_section(BERT)))
    result = data.data(bert_session)
    failing = {k.key: k.reason for k in result.failing}
    first = result.failing[0]
    assert first.key == key and first.reason.startswith(reason), f"{first.key}: {first.reason}"
    if name == "pad_to_max":  # each batch says which side pads to a fixed length
        assert failing["train.batch_0.input_ids"].startswith(
            "shape (8, 17) vs (8, 64): paddle pads to 64 in every batch (a max length), torch to the longest in the batch")


def test_vision_pipeline_is_aligned_and_a_channel_order_swap_is_named(tmp_path):
    proc = cli("run", VISION / "pair.toml", "--out", tmp_path / "o", timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    same = _variant(tmp_path, VISION, "same", "NORMALIZE_PADDLE.update()", _data_section(VISION))
    session = Session(same, RunOptions(out_dir=tmp_path / "out"), progress=lambda m: None)
    try:
        session.start()
        images = {}
        for seed in (0, 1):  # the flip is drawn from Python's random, seeded from [data] seed on both sides
            session.use(same.replace(data=dataclasses.replace(same.data, seed=seed)))
            assert data.data(session).passed
            saved = np.load(session.writer.out_dir / "data_paddle.npy", allow_pickle=True).item()
            images[seed] = saved["train.item_0.image"]
        session.use(_variant(tmp_path, VISION, "bgr", 'NORMALIZE_PADDLE.update(mean=example.MEAN[::-1], '
                                                       'std=example.STD[::-1])', _data_section(VISION)))
        swapped = data.data(session)
    finally:
        session.close()
    assert np.array_equal(images[1], images[0][..., ::-1])  # one seed flips item 0, the other does not
    first = swapped.failing[0]
    assert first.key == "train.item_0.image", first.key
    assert "channels 0, 2 differ" in first.reason and "1 agrees" in first.reason and "mean/std" in first.reason
