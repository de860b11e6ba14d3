"""The examples run as their READMEs say and are reported aligned."""

import importlib.util
import os

import pytest

from conftest import ROOT, check, cli, report

pytestmark = pytest.mark.e2e  # every test here starts workers

HAVE_BERT_LIBS = all(importlib.util.find_spec(m) is not None for m in ("transformers", "paddlenlp"))


def test_transformer_encoder_example_every_check(tmp_path):
    proc = cli("run", ROOT / "examples" / "transformer_encoder" / "pair.toml", "--out", tmp_path / "o")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rep = report(tmp_path / "o")
    assert [c["name"] for c in rep["checks"]] == ["forward", "metric", "loss", "lr", "backward", "train"]
    assert "split 1/3, transpose" in (tmp_path / "o" / "weight_map.txt").read_text()


@pytest.mark.skipif(not HAVE_BERT_LIBS and not os.environ.get("REPROD_REQUIRE_EXAMPLES"),
                    reason="needs the examples extra + paddlenlp (CI installs them and sets "
                           "REPROD_REQUIRE_EXAMPLES=1, which turns this skip into a failure)")
def test_bert_hf_vs_paddlenlp_is_aligned(tmp_path):
    proc = cli("run", ROOT / "examples" / "bert_sst2" / "pair.toml", "--out", tmp_path / "o", timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rep = report(tmp_path / "o")
    forward = check(rep, "forward")["keys"][0]
    assert forward["mean_abs"] < 1e-7  # measured about 6e-9 on CPU
    table = (tmp_path / "o" / "weight_map.txt").read_text()
    assert "attention.self.query.weight" in table and "self_attn.q_proj.weight" in table
