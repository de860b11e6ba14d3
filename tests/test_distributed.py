"""Multi-card alignment on CPU with gloo: paddle.DataParallel vs torch DDP, 2 ranks each."""

import numpy as np
import pytest

from conftest import check, cli, report
from test_failures import _run_tagged, _tagged_processes
from harness.distributed import Layout, rank_env, shard, validate
from harness.errors import UsageError


def test_shards_are_contiguous_like_distributed_batch_sampler():
    batch = {"x": np.arange(8).reshape(8, 1), "y": np.arange(8)}
    assert shard(batch, 0, 2)["y"].tolist() == [0, 1, 2, 3]
    assert shard(batch, 1, 2)["y"].tolist() == [4, 5, 6, 7]
    with pytest.raises(UsageError, match="not divisible by 3"):
        shard(batch, 0, 3)


def test_rank_environment_on_a_four_gpu_box():
    shared = Layout(nprocs=4, devices=(0, 1, 2, 3))
    ports = [20000 + i for i in range(5)]
    for r in range(4):
        t, p = rank_env("torch", r, shared, ports), rank_env("paddle", r, shared, ports)
        assert t["CUDA_VISIBLE_DEVICES"] == p["CUDA_VISIBLE_DEVICES"] == str(r)
        assert t["RANK"] == str(r) and t["WORLD_SIZE"] == "4" and t["REPROD_COMM_BACKEND"] == "nccl"
        assert p["PADDLE_TRAINER_ID"] == str(r) and p["PADDLE_TRAINERS_NUM"] == "4" and p["FLAGS_selected_gpus"] == "0"
        assert p["PADDLE_DISTRI_BACKEND"] == "nccl" and len(p["PADDLE_TRAINER_ENDPOINTS"].split(",")) == 4
    split = Layout(nprocs=2, devices=(0, 1, 2, 3), placement="split")
    assert [rank_env("torch", r, split, ports)["CUDA_VISIBLE_DEVICES"] for r in range(2)] == ["0", "1"]
    assert [rank_env("paddle", r, split, ports)["CUDA_VISIBLE_DEVICES"] for r in range(2)] == ["2", "3"]
    cpu = rank_env("torch", 1, Layout(nprocs=2), ports)
    assert cpu["REPROD_COMM_BACKEND"] == "gloo" and "CUDA_VISIBLE_DEVICES" not in cpu
    two_nodes = Layout(nprocs=2, nnodes=2, node_rank=1, master="10.0.0.1:29500", ips=("10.0.0.1", "10.0.0.2"))
    env = rank_env("torch", 1, two_nodes, ports)
    assert env["RANK"] == "3" and env["WORLD_SIZE"] == "4" and env["MASTER_ADDR"] == "10.0.0.1"
    penv = rank_env("paddle", 1, two_nodes, ports)
    assert penv["PADDLE_TRAINER_ENDPOINTS"] == "10.0.0.1:29501,10.0.0.1:29502,10.0.0.2:29503,10.0.0.2:29504"
    assert penv["PADDLE_CURRENT_ENDPOINT"] == "10.0.0.2:29504" and penv["PADDLE_TRAINER_ID"] == "3"
    with pytest.raises(UsageError, match="needs --master"):
        validate(Layout(nprocs=2, nnodes=2))
    with pytest.raises(UsageError, match="needs --ips"):
        validate(Layout(nprocs=2, nnodes=2, master="10.0.0.1:29500"))


def test_mlp_two_ranks_aligned_and_equivalent_to_one_rank(tmp_path):
    proc = cli("run", "--zoo", "mlp", "--nprocs", "2", "--dp-equivalence", "--checks", "backward", "--out", tmp_path / "o")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rep = report(tmp_path / "o")
    keys = {k["key"] for k in check(rep, "backward")["keys"]}
    assert {"rank0:loss_0", "rank1:loss_0", "loss_0", "sync:torch:rank1", "sync:paddle:rank1"} <= keys
    assert check(rep, "dp_equivalence")["passed"]
    assert (tmp_path / "o" / "rank1" / "bp_align_paddle.npy").exists()


DP_ONLY_BUG = '''
import paddle
import paddle.nn.functional as F
import torch
from backends.zoo.mlp.pair import build_paddle, build_torch, make_batch  # noqa: F401

def loss_torch(output, batch):
    return torch.nn.functional.cross_entropy(output, batch["label"])

def loss_paddle(output, batch):
    # "DataParallel sums gradients, so scale the loss up": wrong, it averages. Invisible on 1 card.
    return F.cross_entropy(output, batch["label"]) * paddle.distributed.get_world_size()
'''


def test_dp_only_bug_is_caught_with_two_ranks_only(make_pair, tmp_path):
    toml = make_pair(DP_ONLY_BUG, '[data]\ninputs = ["x"]\n[loss]\nkind = "pair"\n', name="dpbug")
    single = cli("run", toml, "--checks", "loss,backward", "--out", tmp_path / "one")
    assert single.returncode == 0, single.stdout + single.stderr
    multi = cli("run", toml, "--checks", "loss,backward", "--nprocs", "2", "--out", tmp_path / "two")
    assert multi.returncode == 1, multi.stdout + multi.stderr
    rep = report(tmp_path / "two")
    # rank 0 already sees world size 2 in the loss check; the training steps diverge too
    assert not check(rep, "backward")["passed"]
    assert any(not k["passed"] for k in check(rep, "backward")["keys"] if k["key"].startswith("rank1:loss_"))


RANK_FAILURE = '''
import os
import numpy as np
import torch, paddle
from backends.zoo.mlp.pair import build_paddle, make_batch  # noqa: F401
from backends.zoo.mlp.pair import build_torch as _build_torch

def build_torch():
    return _build_torch()

def forward_torch(model, batch):
    if os.environ.get("RANK") == "1" and isinstance(model, torch.nn.parallel.DistributedDataParallel):
        {action}
    return model(batch["x"])
'''


@pytest.mark.parametrize("action,expect", [("raise RuntimeError('rank 1 broke')", "RuntimeError: rank 1 broke"),
                                           ("os._exit(9)", "exit code 9")], ids=["raises", "dies"])
def test_rank_failure_exits_3_without_strays(make_pair, tmp_path, action, expect):
    toml = make_pair(RANK_FAILURE.format(action=action), '[data]\ninputs = ["x"]\n', name="rankfail")
    proc, seconds, tag = _run_tagged("run", toml, "--nprocs", "2", "--checks", "backward", "--out", tmp_path / "o",
                                     "--timeout", "60")
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert expect in proc.stderr and "torch.1 worker" in proc.stderr
    assert _tagged_processes(tag) == []


def test_two_nodes_on_one_machine_synchronize(tmp_path):
    """--nnodes 2: two coordinators (as on two machines) whose ranks form one group per framework."""
    import json
    import subprocess
    import sys

    from conftest import ROOT
    from harness.distributed import free_ports

    port = free_ports(1)[0]
    procs = [
        subprocess.Popen([sys.executable, "-m", "harness", "run", "--zoo", "mlp", "--nnodes", "2", "--node-rank", str(n),
                          "--master", f"127.0.0.1:{port}", "--ips", "127.0.0.1,127.0.0.1", "--checks", "backward",
                          "--out", str(tmp_path / f"node{n}"), "--timeout", "120", "-q"],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for n in (0, 1)
    ]
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    keys = [{k["key"] for k in json.loads((tmp_path / f"node{n}" / "report.json").read_text())["checks"][0]["keys"]}
            for n in (0, 1)]
    assert "rank0:loss_0" in keys[0] and "rank1:loss_0" in keys[1]
    for fw in ("torch", "paddle"):  # all-reduced: both nodes end with the same parameters
        a, b = (np.load(tmp_path / f"node{n}" / f"bp_params_{fw}.npy", allow_pickle=True).tolist() for n in (0, 1))
        assert set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)


def test_single_process_run_on_a_chosen_card():
    from harness.distributed import device_env

    assert device_env("paddle", 0, Layout(devices=(3,))) == {"CUDA_VISIBLE_DEVICES": "3"}
    assert device_env("paddle", 0, Layout(devices=(0, 1), placement="split")) == {"CUDA_VISIBLE_DEVICES": "1"}
    assert device_env("torch", 0, Layout()) == {}
