"""End to end, as a user runs it: every zoo pair aligned, an injected bug caught at forward."""


import numpy as np
import pytest

from conftest import PAIRS, check, cli, report

pytestmark = pytest.mark.e2e  # every test here starts workers

SCHEMA_KEYS = {"schema", "name", "aligned", "checks", "first_divergence", "environment", "timing"}


def _well_formed(rep: dict, name: str) -> None:
    assert SCHEMA_KEYS <= set(rep)
    assert rep["schema"] == 1 and rep["name"] == name
    assert rep["checks"], "no check ran"
    for c in rep["checks"]:
        assert {"name", "passed", "keys"} <= set(c)
        for k in c["keys"]:
            assert {"key", "passed"} <= set(k)
    assert {"wall_s", "torch_s", "paddle_s"} <= set(rep["timing"])


@pytest.mark.parametrize("name", ["mlp", "cnn", "tiny_transformer"])
def test_zoo_pair_is_aligned(name, tmp_path):
    out = tmp_path / name
    proc = cli("run", "--zoo", name, "--out", out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rep = report(out)
    _well_formed(rep, name)
    assert rep["aligned"] is True and rep["first_divergence"] is None
    for name_ in ("forward", "loss", "backward"):
        c = check(rep, name_)
        assert c["passed"] and all(k["count"] > 0 for k in c["keys"])
    assert "ALIGNED" in proc.stdout and str(out) in proc.stdout.replace("\n", "")
    if name == "cnn":  # paddle's BatchNorm warns in train mode: in report.json, never over the progress display
        assert "UserWarning" not in proc.stderr + proc.stdout  # nor on the console of an aligned run
        assert any(n.startswith("paddle worker: UserWarning: When training") for n in rep["warnings"])


def test_injected_bug_fails_forward(tmp_path):
    out = tmp_path / "flipped"
    proc = cli("run", PAIRS / "flipped" / "pair.toml", "--out", out)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    rep = report(out)
    _well_formed(rep, "flipped")
    assert rep["aligned"] is False
    assert check(rep, "forward")["passed"] is False
    assert rep["first_divergence"]["check"] == "forward"
    assert "MISALIGNED" in proc.stdout


def test_cnn_artifacts_load_in_reprod_log(tmp_path):
    out = tmp_path / "cnn"
    assert cli("run", "--zoo", "cnn", "--out", out).returncode == 0
    from reprod_log import ReprodDiffHelper  # imports paddle: fine in a test, never in harness/

    helper = ReprodDiffHelper()
    for stem in ("forward", "loss", "bp_align"):
        a = helper.load_info(str(out / f"{stem}_torch.npy"))
        b = helper.load_info(str(out / f"{stem}_paddle.npy"))
        assert set(a) == set(b) and a
        helper.compare_info(a, b)
        for key, stats in helper.diff_dict.items():
            assert np.isfinite(stats["mean"]) and stats["mean"] <= 1e-6, (stem, key, stats)
    assert (out / "weight_map.txt").read_text().count("transpose") == 1  # the head Linear


def test_python_m_harness_and_version():
    proc = cli("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("reprod-harness ")
    proc = cli("zoo")
    assert proc.returncode == 0
    assert {"mlp", "cnn", "tiny_transformer"} <= {line.split()[0] for line in proc.stdout.splitlines() if line.strip()}
