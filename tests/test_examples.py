"""The examples run as their READMEs say and are reported aligned."""

import pytest

from conftest import PAIRS, ROOT, check, cli, needs_bert_libs, report

pytestmark = pytest.mark.e2e  # every test here starts workers


def test_transformer_encoder_example_every_check(tmp_path):
    proc = cli("run", ROOT / "examples" / "transformer_encoder" / "pair.toml", "--out", tmp_path / "o")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rep = report(tmp_path / "o")
    assert [c["name"] for c in rep["checks"]] == ["forward", "metric", "loss", "lr", "backward", "train"]
    assert "split 1/3, transpose" in (tmp_path / "o" / "weight_map.txt").read_text()


@needs_bert_libs
def test_bert_hf_vs_paddlenlp_is_aligned(tmp_path):
    """With --locate too: no divergence, and the console of this aligned run shows no note (every
    one it once printed changed nothing: 8 unmatched-module notes, a setuptools warning, datasets'
    "PyTorch version ... available" from the paddle worker)."""
    proc = cli("run", ROOT / "examples" / "bert_sst2" / "pair.toml", "--out", tmp_path / "o", "--locate", timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "note" not in proc.stdout and "warning" not in proc.stdout.lower(), proc.stdout
    assert "PyTorch version" not in proc.stderr and "Warning" not in proc.stderr, proc.stderr
    rep = report(tmp_path / "o")
    assert rep["first_divergence"] is None and rep["notes"] == []
    forward = check(rep, "forward")["keys"][0]
    assert forward["mean_abs"] < 1e-7  # measured about 6e-9 on CPU
    table = (tmp_path / "o" / "weight_map.txt").read_text()
    assert "attention.self.query.weight" in table and "self_attn.q_proj.weight" in table


@needs_bert_libs
def test_a_pair_importing_torch_paddle_and_their_libraries_at_the_top_runs(tmp_path):
    """tests/pairs/libraries imports torch, paddle, scipy, transformers and PaddleNLP at the top:
    the coordinator and both workers load it as it is, each hiding the framework it does not hold
    from those libraries (scipy once found a torch stand-in in sys.modules and failed)."""
    proc = cli("run", PAIRS / "libraries" / "pair.toml", "--out", tmp_path / "o", timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert report(tmp_path / "o")["aligned"]
    assert "PyTorch version" not in proc.stderr  # datasets, in the paddle worker, finds no torch to announce
