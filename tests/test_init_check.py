"""The init check: each side's freshly built model compared per parameter as a distribution, every
difference named with what each side looks like and the paddle initializer that would match."""

import math

import numpy as np
import pytest

from backends.state import summarize
from conftest import ROOT, check, cli, report
from harness.checks.initstats import ALPHA, Side, describe, initializer, matching, p_values, portrait


def _side(framework, shape, values, fan_in=None):
    return Side(framework, "w", tuple(shape), summarize(np.asarray(values, np.float32), np.random.default_rng(0)), fan_in)


def test_same_distributions_pass_and_a_tenth_more_std_does_not():
    RNG = np.random.default_rng(0)
    level = ALPHA / 3
    a, b = RNG.standard_normal(16384), RNG.standard_normal(16384)
    assert min(p_values(_side("torch", [16384], a).stats, _side("paddle", [16384], b).stats).values()) > level
    wider = _side("paddle", [16384], RNG.standard_normal(16384) * 1.1).stats
    assert p_values(_side("torch", [16384], a).stats, wider)["scale"] < level
    uniform = _side("paddle", [16384], RNG.uniform(-math.sqrt(3), math.sqrt(3), 16384)).stats  # the same std
    assert p_values(_side("torch", [16384], a).stats, uniform)["shape"] < level


def test_each_side_is_named_after_the_initializer_its_values_fit():
    RNG = np.random.default_rng(1)
    fan_in, fan_out = 128, 4
    torch_w = RNG.uniform(-1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in), (fan_out, fan_in))  # kaiming_uniform(a=√5)
    bound = math.sqrt(6 / (fan_in + fan_out))
    paddle_w = RNG.uniform(-bound, bound, (fan_in, fan_out))  # XavierUniform, laid out [in, out]
    t, p = _side("torch", torch_w.shape, torch_w), _side("paddle", paddle_w.shape, paddle_w)
    assert portrait(p).startswith("uniform ±0.21") and portrait(p).endswith(
        " — XavierUniform (paddle's Linear/Embedding default)"), portrait(p)
    assert initializer(t).startswith("kaiming_uniform(a=√5)")
    assert matching(t) == 'KaimingUniform(negative_slope=math.sqrt(5), nonlinearity="leaky_relu")'
    bias = _side("torch", [512], RNG.uniform(-1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in), 512), fan_in=fan_in)
    assert initializer(bias).startswith("uniform ±1/√fan_in") and matching(bias) == "Uniform(-0.0884, 0.0884)"
    hf = _side("torch", [512, 64], RNG.standard_normal((512, 64)) * 0.02)
    assert describe(hf).startswith("normal(0, 0.0") and matching(hf) == "Normal(mean=0.0, std=0.02)"
    assert initializer(hf) == "normal(0, initializer_range=0.02) (HF's _init_weights)"
    assert portrait(_side("paddle", [64], np.zeros(64))) == "constant 0 — zeros"
    odd = _side("torch", [4096], RNG.uniform(0.0, 0.3, 4096))  # no formula: its numbers
    assert initializer(odd) is None and matching(odd).startswith("Uniform(") and matching(odd).endswith(", 0.3)")


@pytest.mark.e2e
def test_paddle_defaults_are_caught_and_torchs_initializers_set_on_paddle_pass(tmp_path):
    proc = cli("run", ROOT / "examples" / "init_check" / "pair.toml", "--checks", "init", "--out", tmp_path / "d",
               timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    keys = {k["key"]: k for k in check(report(tmp_path / "d"), "init")["keys"]}
    weight = keys["classifier.weight"]["reason"]
    assert weight.startswith("paddle: uniform ±0.21") and "XavierUniform (paddle's Linear/Embedding default)" in weight
    assert "torch: uniform ±0.088" in weight and "kaiming_uniform(a=√5)" in weight
    assert 'KaimingUniform(negative_slope=math.sqrt(5), nonlinearity="leaky_relu") would match torch' in weight
    assert keys["conv.bias"]["reason"].startswith("paddle: constant 0 — zeros; torch: uniform ±0.07")
    assert "Normal(mean=0.0, std=1.0) would match torch" in keys["embed.weight"]["reason"]
    assert keys["norm.weight"]["passed"]  # LayerNorm starts at ones on both sides
    assert (tmp_path / "d" / "init_torch.npy").exists() and (tmp_path / "d" / "init_diff.log").exists()

    proc = cli("run", ROOT / "examples" / "init_check" / "matched.toml", "--out", tmp_path / "m", timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    init = check(report(tmp_path / "m"), "init")
    assert init["passed"] and len(init["keys"]) == 7
    assert any("too small to tell" in n and "classifier.bias (4 values)" in n for n in init["notes"])
