"""float64 arbitration: a float32 failure is re-run in float64 from the same weights and batches;
round-off shrinks by orders of magnitude there, a real difference does not. Correct ports that
float32 round-off alone fails (AdamW on an encoder; a conv bias before BatchNorm under Adam) are
aligned; bugs only 10-100x that round-off are still caught, at the right check, and located in
float64."""

import numpy as np
import pytest
from test_locate import CNN

from conftest import PAIRS, check, cli, report
from harness.verdict import rules
from harness.verdict.diff import compare_dicts
from harness.verdict.keys import Key, Kind
from harness.verdict.tolerance import ToleranceConfig

ROUNDOFF = PAIRS / "roundoff" / "pair.toml"


def _judged(torch_loss, paddle_loss, dtype):
    key = Key(Kind.LOSS, step=3)
    return compare_dicts("backward", {key: np.array(torch_loss, dtype)}, {key: np.array(paddle_loss, dtype)},
                         ToleranceConfig())


@pytest.mark.parametrize("wide_gap, verdict", [(3e-13, True), (1.4e-6, False), (2e-9, True)],
                         ids=["round_off", "real_difference", "within_tolerance"])
def test_a_key_is_decided_by_how_its_difference_shrinks_in_float64(wide_gap, verdict):
    narrow = _judged(2.5, 2.5 + 1.5e-5, np.float32)
    assert not narrow.passed
    wide = _judged(2.5, 2.5 + wide_gap, np.float64)
    rules.arbitrate(narrow, wide)
    key = narrow.keys[0]
    assert (key.passed, key.precision, narrow.arbitration) == (verdict, "float64", "float64")
    assert (key.rule == rules.ARBITRATION) == verdict
    assert ("round-off" in key.note) if verdict else ("float64 still differs" in key.reason)


def test_keys_float32_agreed_on_stay_decided_in_float32():
    key = Key(Kind.LOSS, step=0)
    narrow = compare_dicts("backward", {key: np.float32(1.0), Key(Kind.LOSS, step=1): np.float32(2.0)},
                           {key: np.float32(1.0), Key(Kind.LOSS, step=1): np.float32(2.001)}, ToleranceConfig())
    rules.arbitrate(narrow, compare_dicts("backward", {}, {}, ToleranceConfig()))
    assert narrow.keys[0].passed and narrow.keys[0].precision == "float32"
    assert not narrow.keys[1].passed and "missing" in narrow.keys[1].reason


@pytest.mark.e2e
def test_float32_round_off_under_adamw_is_aligned_by_float64(tmp_path):
    proc = cli("run", ROUNDOFF, "--checks", "forward,backward", "--out", tmp_path / "o")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    backward = check(report(tmp_path / "o"), "backward")
    assert backward["arbitration"] == "float64"
    decided = [k for k in backward["keys"] if k.get("rule") == "float64_arbitration"]
    assert decided and all(k["precision"] == "float64" and "round-off" in k["note"] for k in decided)
    assert not any(k.get("rule") in rules.FALLBACK_RULES for k in backward["keys"])  # float64 needs no release
    assert (tmp_path / "o" / "float64" / "bp_align_torch.npy").exists()
    alone = cli("run", ROUNDOFF, "--checks", "backward", "--out", tmp_path / "f32", "--float32-only")
    assert alone.returncode == 1, "the float32 false alarm this test is about no longer happens"
    assert check(report(tmp_path / "f32"), "backward")["arbitration"].startswith("fallback")


@pytest.mark.e2e
@pytest.mark.parametrize("bug, where, layer", [("lr_one_percent", ("backward", "update"), "embed.weight"),
                                               ("layernorm_eps", ("forward", "forward"), "encoder.layers.0.norm1")])
def test_bugs_near_round_off_are_still_caught_and_located(tmp_path, bug, where, layer):
    proc = cli("run", ROUNDOFF, "--checks", "forward,backward", "--out", tmp_path / "o", env={"REPROD_TEST_BUG": bug})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    rep = report(tmp_path / "o")
    failed = check(rep, where[0])
    assert failed["arbitration"] == "float64"
    assert any(not k["passed"] and k["precision"] == "float64" and "float64 still differs" in k["reason"]
               for k in failed["keys"])
    div = rep["first_divergence"]
    assert (div["check"], div["where"], div["layer"]) == (*where, layer), div["detail"]


@pytest.mark.e2e
@pytest.mark.parametrize("bug, aligned", [("none", True), ("bn_momentum", False)])
def test_batchnorm_statistics_after_adam(make_pair, tmp_path, bug, aligned):
    """A conv bias before BatchNorm drifts under Adam (its gradient is round-off) and drags the
    running mean with it in float32; float64 shows the port is right. A momentum mix-up stays caught."""
    toml = make_pair(CNN.format(bug=bug), '[data]\ninputs = ["image"]\n[train]\ntrain_iters = 8\n', name=f"bn_{bug}")
    proc = cli("run", toml, "--out", tmp_path / "o")  # every check
    assert proc.returncode == (0 if aligned else 1), proc.stdout + proc.stderr
    rep = report(tmp_path / "o")
    assert [c["name"] for c in rep["checks"] if not c["passed"]] == ([] if aligned else ["train"])
    train = check(rep, "train")
    means = [k for k in train["keys"] if k["key"].startswith("buffer:") and k["key"].endswith("running_mean")]
    assert means and all(k["passed"] == (aligned or k["key"] != "buffer:bn1.running_mean") for k in means)
    if not aligned:
        div = report(tmp_path / "o")["first_divergence"]
        assert div["where"] == "buffer" and "momentum convention" in div["detail"]


@pytest.mark.e2e
def test_the_encoder_benchmark_pair_is_aligned_with_default_tolerances(tmp_path):
    """benchmarks/pairs/encoder4 (4 layers, d 256, AdamW lr 1e-4, its own exact torch_to_paddle):
    float32 fails its loss of step 3 at about 1.5e-6 > 1e-6; float64 says round-off."""
    from conftest import ROOT

    toml = ROOT / "benchmarks" / "pairs" / "encoder4" / "pair.toml"
    proc = cli("run", toml, "--checks", "backward", "--out", tmp_path / "o", timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    backward = check(report(tmp_path / "o"), "backward")
    if "arbitration" in backward:  # on this machine's kernels float32 fails loss_3; float64 decides
        assert backward["arbitration"] == "float64"
        assert any(k.get("rule") == "float64_arbitration" for k in backward["keys"])


def test_nan_shape_and_missing_keys_are_never_sent_to_float64():
    key = Key(Kind.VALUE, "out")
    nan = compare_dicts("forward", {key: np.array([1.0, np.nan], np.float32)}, {key: np.array([1.0, 2.0], np.float32)},
                        ToleranceConfig())
    shape = compare_dicts("forward", {key: np.zeros(3, np.float32)}, {key: np.zeros(4, np.float32)}, ToleranceConfig())
    missing = compare_dicts("forward", {key: np.zeros(3, np.float32)}, {}, ToleranceConfig())
    for result in (nan, shape, missing):
        assert not result.passed and not any(rules.arbitrable(k) for k in result.keys)
        reason = result.keys[0].reason
        rules.arbitrate(result, compare_dicts("forward", {}, {}, ToleranceConfig()))
        assert result.keys[0].reason == reason and result.keys[0].precision in ("float32", "")
