"""Real sizes: tensors above the shared-memory threshold through every path (weights both ways,
gradients, parameters, outputs, data-parallel shards, localization traces, checkpoints), and the
bounded-memory pieces (chunked statistics, per-tensor summaries instead of model-sized dumps)."""

from pathlib import Path

import numpy as np
import pytest

from conftest import PAIRS, check, cli, report
from harness.checks.common import FULL_DUMP_BYTES, save_tensors
from harness.report.artifacts import ArtifactWriter, tensor_stats
from harness.session import RunOptions
from harness.verdict.diff import CheckResult
from harness.workers import protocol

WIDE = PAIRS / "wide" / "pair.toml"


def test_the_wide_pair_really_crosses_the_threshold():
    from harness.config import parse
    from harness.pair.batches import BatchSource

    cfg = parse.load(WIDE)
    with BatchSource(cfg) as data:
        batch = data.batch(0)
    assert 2048 * 256 * 4 >= protocol.SHM_MIN_BYTES and 256 * 1024 * 4 >= protocol.SHM_MIN_BYTES
    assert batch["x"].shape[0] * batch["x"].shape[1] * 256 * 4 >= protocol.SHM_MIN_BYTES  # embedding output


@pytest.mark.e2e
def test_every_check_and_localization_with_large_tensors(tmp_path):
    proc = cli("run", WIDE, "--out", tmp_path / "o", "--locate")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rep = report(tmp_path / "o")
    assert rep["aligned"] and rep["first_divergence"] is None
    backward = check(rep, "backward")
    assert {"param:embed.weight", "grad:embed.weight", "param:up.weight"} <= {k["key"] for k in backward["keys"]}
    assert backward["tensor_dumps"] == "full"
    params = np.load(tmp_path / "o" / "bp_params_paddle.npy", allow_pickle=True).item()
    assert params["embed.weight"].shape == (2048, 256)


@pytest.mark.e2e
def test_two_ranks_with_large_tensors(tmp_path):
    proc = cli("run", WIDE, "--nprocs", "2", "--checks", "backward", "--out", tmp_path / "o")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert {"sync:torch:rank1", "sync:paddle:rank1"} <= {k["key"] for k in check(report(tmp_path / "o"), "backward")["keys"]}


@pytest.mark.e2e
def test_large_checkpoints_convert_both_ways_and_start_a_run(tmp_path):
    import importlib.util

    import torch

    spec = importlib.util.spec_from_file_location("wide_pair", PAIRS / "wide" / "pair.py")
    wide = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(wide)
    torch.manual_seed(7)
    original = wide.build_torch().state_dict()
    torch.save(original, tmp_path / "w.pt")
    proc = cli("convert", "--pair", WIDE, "--torch-weights", tmp_path / "w.pt", "--out", tmp_path / "w.pdparams")
    assert proc.returncode == 0, proc.stderr
    proc = cli("convert", "--pair", WIDE, "--paddle-weights", tmp_path / "w.pdparams", "--out", tmp_path / "back.pt")
    assert proc.returncode == 0, proc.stderr
    back = torch.load(tmp_path / "back.pt", weights_only=True)
    for k in original:
        np.testing.assert_array_equal(back[k].numpy(), original[k].numpy())
    proc = cli("run", WIDE, "--weights", tmp_path / "w.pdparams", "--checks", "forward,backward", "--out", tmp_path / "o")
    assert proc.returncode == 0, proc.stdout + proc.stderr


class _Session:
    """What save_tensors reads of a session: its options and its writer."""

    def __init__(self, out: Path, save: bool):
        self.options = RunOptions(out_dir=out, save_tensors=save)
        self.writer = ArtifactWriter(out)


@pytest.mark.parametrize("save", [False, True], ids=["default", "save_tensors"])
def test_model_sized_dumps_become_statistics_unless_asked(tmp_path, save):
    rows = FULL_DUMP_BYTES // 4 // 1024 // 4 + 1  # params + grads of both sides just above the limit
    big = {"w": np.random.default_rng(0).standard_normal((rows, 1024)).astype(np.float32)}
    by_side = {"torch": big, "paddle": big}
    result = CheckResult("backward")
    save_tensors(_Session(tmp_path, save), result, params=by_side, grads=by_side)
    names = sorted(p.name for p in tmp_path.iterdir())
    if save:
        assert result.tensor_dumps == "full" and "bp_params_torch.npy" in names and not result.notes
    else:
        assert result.tensor_dumps == "statistics" and "bp_params_stats_torch.npy" in names
        assert "bp_params_torch.npy" not in names and "--save-tensors" in result.notes[0]
        stats = np.load(tmp_path / "bp_grads_stats_paddle.npy", allow_pickle=True).item()["w"]
        w = big["w"].astype(np.float64)
        np.testing.assert_allclose(stats, [w.mean(), w.std(), w.min(), w.max(), np.linalg.norm(w)], rtol=1e-9)


def test_tensor_stats_of_a_constant_tensor():
    stats = tensor_stats({"c": np.full((3, 4), 2.0, np.float32), "empty": np.zeros(0)})
    np.testing.assert_allclose(stats["c"], [2.0, 0.0, 2.0, 2.0, np.sqrt(12 * 4.0)])
    assert "empty" not in stats
