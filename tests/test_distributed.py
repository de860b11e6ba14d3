"""Multi-card alignment on CPU with gloo: paddle.DataParallel vs torch DDP, 2 ranks each.

The CLI runs what a user runs (zoo mlp, exit codes, stray processes); the cases that need no
separate process tree share one 2-rank session (4 workers), each case rebuilding both models."""

import time
import uuid

import numpy as np
import pytest

from conftest import check, cli, pair_folder, report, tagged_processes
from harness.checks.common import judge
from harness.checks.parallel import dp_equivalence
from harness.checks.training import backward
from harness.config import parse, schema
from harness.coordinator import first_divergence
from harness.errors import UsageError, WorkerError
from harness.session import RunOptions, Session
from harness.verdict.keys import Key, Kind
from harness.verdict.rules import Evidence
from harness.workers.process import WorkerGroup, WorkerSpec
from harness.workers.protocol import Op, Request
from harness.workers.ranks import Layout, rank_env, shard, validate


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


@pytest.mark.e2e
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


@pytest.mark.e2e
def test_dp_only_bug_passes_on_one_card(make_pair, tmp_path):
    """The pair below is a correct port on one card; the 2-rank session test catches it."""
    toml = make_pair(DP_ONLY_BUG, '[data]\ninputs = ["x"]\n[loss]\nkind = "pair"\n', name="dpbug")
    single = cli("run", toml, "--checks", "loss,backward", "--out", tmp_path / "one")
    assert single.returncode == 0, single.stdout + single.stderr


RANK_FAILURE = '''
import os
import numpy as np
import torch, paddle
from backends.zoo.mlp import pair as mlp
from backends.zoo.mlp.pair import make_batch  # noqa: F401

def _mark():
    # every worker and rank builds a model: its pid tells the test which processes must be gone
    open(os.path.join(os.environ["REPROD_PID_DIR"], str(os.getpid())), "w").close()

def build_torch():
    _mark()
    return mlp.build_torch()

def build_paddle():
    _mark()
    return mlp.build_paddle()

def forward_{side}(model, batch):
    if os.environ.get("{rank_var}") == "1" and isinstance(model, {wrapper}):
        {action}
    return model(batch["x"])
'''
WRAPPERS = {"torch": ("RANK", "torch.nn.parallel.DistributedDataParallel"),
            "paddle": ("PADDLE_TRAINER_ID", "paddle.DataParallel")}


@pytest.mark.e2e
@pytest.mark.parametrize("side,action,expect", [
    ("torch", "raise RuntimeError('rank 1 broke')", "RuntimeError: rank 1 broke"),
    ("paddle", "os._exit(9)", "exit code 9"),
], ids=["torch_rank_raises", "paddle_rank_dies"])
@pytest.mark.e2e
def test_rank_failure_exits_3_without_strays(make_pair, tmp_path, side, action, expect):
    rank_var, wrapper = WRAPPERS[side]
    source = RANK_FAILURE.format(side=side, rank_var=rank_var, wrapper=wrapper, action=action)
    toml = make_pair(source, '[data]\ninputs = ["x"]\n', name="rankfail")
    pids, tag = tmp_path / "pids", uuid.uuid4().hex
    pids.mkdir()
    proc = cli("run", toml, "--nprocs", "2", "--checks", "backward", "--out", tmp_path / "o", "--timeout", "60",
               env={"REPROD_TEST_TAG": tag, "REPROD_PID_DIR": str(pids)}, timeout=120)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert expect in proc.stderr and f"{side}.1 worker" in proc.stderr
    if "exit code" in expect:  # the dead rank is named as the cause before any peer's error
        dead = proc.stderr.index(f"{side}.1 worker: died")
        peer = proc.stderr.find(f"{side} worker: ")  # rank 0's failure, when it is shown at all
        assert peer == -1 or dead < peer
    assert not (tmp_path / "o" / "report.json").exists()
    started = [int(p.name) for p in pids.iterdir()]
    assert len(started) == 4  # both ranks of both frameworks ran, carrying the tag the scan looks for
    assert tagged_processes(tag) == []


@pytest.mark.e2e
def test_a_rank_hanging_in_a_step_meets_the_step_deadline_naming_the_phase(make_pair, tmp_path):
    """Joining the ranks is start-up, but a step after it is a step: --timeout applies there, and
    the message says which phase hung (not start-up)."""
    rank_var, wrapper = WRAPPERS["torch"]
    source = RANK_FAILURE.format(side="torch", rank_var=rank_var, wrapper=wrapper, action="__import__('time').sleep(600)")
    toml = make_pair(source, '[data]\ninputs = ["x"]\n', name="rankhang")
    pids, tag = tmp_path / "pids", uuid.uuid4().hex
    pids.mkdir()
    start = time.monotonic()
    proc = cli("run", toml, "--nprocs", "2", "--checks", "backward", "--out", tmp_path / "o", "--timeout", "10",
               env={"REPROD_TEST_TAG": tag, "REPROD_PID_DIR": str(pids)}, timeout=150)
    took = time.monotonic() - start
    assert proc.returncode == 3, proc.stdout + proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    # rank 1 sleeps, rank 0 waits for it in the step's all-reduce: both are silent, and whichever
    # passed its deadline first is named (both, when they did so together)
    assert last.startswith("error: torch") and " worker: no answer to 'backward' in step 1 of 5 within 10 s (raise " \
        "--timeout" in last, last
    assert "start-up" not in last and "joining" not in last
    assert took < 90, f"{took:.0f} s"
    deadline = time.monotonic() + 5
    while tagged_processes(tag) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert tagged_processes(tag) == []


@pytest.mark.e2e
def test_two_nodes_on_one_machine_synchronize(tmp_path):
    """--nnodes 2: two coordinators (as on two machines) whose ranks form one group per framework."""
    import json
    import subprocess
    import sys

    from conftest import ROOT
    from harness.workers.ranks import free_ports

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
    from harness.workers.ranks import device_env

    assert device_env("paddle", 0, Layout(devices=(3,))) == {"CUDA_VISIBLE_DEVICES": "3"}
    assert device_env("paddle", 0, Layout(devices=(0, 1), placement="split")) == {"CUDA_VISIBLE_DEVICES": "1"}
    assert device_env("torch", 0, Layout()) == {}


def test_nccl_needs_one_card_per_rank():
    validate(Layout(nprocs=4, devices=(0, 1, 2, 3)))
    validate(Layout(nprocs=2, devices=(0, 1, 2, 3), placement="split"))
    with pytest.raises(UsageError, match="two torch ranks on one card"):
        validate(Layout(nprocs=3, devices=(0, 1, 2, 3), placement="split"))
    with pytest.raises(UsageError, match="one card per rank"):
        validate(Layout(nprocs=2, devices=(0,)))
    validate(Layout(nprocs=2, devices=(0,), backend="gloo"))  # gloo may share a card


def _losses(rank0_step0, rank0_step1, mean_step1):
    return {Key(Kind.LOSS, step=0, rank=0): np.float32(rank0_step0), Key(Kind.LOSS, step=1, rank=0): np.float32(rank0_step1),
            Key(Kind.LOSS, step=1): np.float32(mean_step1)}


def test_rank_losses_after_step_0_judged_against_their_change():
    ref = _losses(2.0, 1.5, 1.5)
    near = _losses(2.0, 1.5 + 2e-5, 1.5 + 2e-5)
    result = judge("backward", ref, near, schema.ToleranceConfig(), Evidence(adaptive=True))
    verdict = {k.key: (k.passed, k.rule) for k in result.keys}
    assert verdict == {"rank0:loss_0": (True, ""), "rank0:loss_1": (True, "rank_loss_drift"),
                       "loss_1": (False, "")}  # averaged: still strict
    assert not judge("backward", ref, near, schema.ToleranceConfig(), Evidence(adaptive=False)).keys[1].passed
    far = _losses(2.0 + 2e-5, 1.5 + 1e-3, 1.5 + 2e-5)
    result = judge("backward", ref, far, schema.ToleranceConfig(), Evidence(adaptive=True))
    assert not any(k.passed for k in result.keys)  # step 0 strict; 1e-3 is past 1e-4 of the 0.5 change
    assert first_divergence([result]).step == 0


# --------------------------------------------------------------------------- one 2-rank session

TRANSFORMER_ADAMW = ("from backends.zoo.tiny_transformer.pair import build_paddle, build_torch, make_batch  # noqa\n",
                     '[data]\ninputs = ["input_ids"]\nbatch_size = 8\n[optimizer]\nname = "adamw"\nlr = 0.01\n'
                     '[train]\niters = 5\n')
# The port is right; the paddle side calls the layer inside DataParallel, whose forward never
# runs, so paddle's gradients are never all-reduced. Invisible on one card.
BYPASS = ('''
import paddle
from backends.zoo.mlp.pair import build_paddle, build_torch, make_batch  # noqa: F401

def forward_paddle(model, batch):
    return getattr(model, "_layers", model)(batch["x"])
''', '[data]\ninputs = ["x"]\nbatch_size = 16\n[optimizer]\nname = "sgd"\nlr = 0.1\n')
CNN_TRAIN_MODE = ("from backends.zoo.cnn.pair import build_paddle, build_torch, make_batch  # noqa\n",
                  '[data]\ninputs = ["image"]\n[optimizer]\nname = "sgd"\nlr = 0.05\n[train]\niters = 3\nmode = "train"\n')


@pytest.fixture(scope="module")
def dp_session(tmp_path_factory):
    root = tmp_path_factory.mktemp("dp_pairs")
    pairs = {name: pair_folder(root, name, *spec) for name, spec in
             (("transformer_adamw", TRANSFORMER_ADAMW), ("bypass", BYPASS), ("cnn_train_mode", CNN_TRAIN_MODE),
              ("dpbug", (DP_ONLY_BUG, '[data]\ninputs = ["x"]\n[loss]\nkind = "pair"\n')))}
    first = parse.load(pairs["transformer_adamw"])
    s = Session(first, RunOptions(out_dir=tmp_path_factory.mktemp("dp_out"), layout=Layout(nprocs=2), timeout=300),
                progress=lambda m: None)
    s.start()
    yield s, pairs
    s.close()


def _use(dp, name):
    """The same four workers, the next pair: both models rebuilt."""
    session, pairs = dp
    session.use(parse.load(pairs[name]))
    return session


def _failing(result):
    return {k.key for k in result.keys if not k.passed}


@pytest.mark.e2e
def test_adamw_transformer_two_ranks_no_false_alarm(dp_session):
    """Adam turns rounding noise on zero-gradient elements (attention's key bias) into steps of
    lr; neither torch vs paddle under DP nor N ranks vs 1 rank may call that a divergence."""
    session = _use(dp_session, "transformer_adamw")
    result = backward(session)
    assert result.passed, _failing(result)
    assert any("k_proj.bias: unconstrained" in n for n in result.notes)
    assert any(k.rule == "unconstrained_elements" for k in result.keys)
    equivalence = dp_equivalence(session)
    assert equivalence.passed, _failing(equivalence)
    assert {"torch:loss_4", "paddle:loss_4", "paddle:param:head.weight", "torch:grad:head.weight"} <= \
        {k.key for k in equivalence.keys}


@pytest.mark.e2e
def test_ungathered_gradients_caught(dp_session):
    session = _use(dp_session, "bypass")
    result = backward(session)
    failing = _failing(result)
    assert "sync:paddle:rank1" in failing and "sync:torch:rank1" not in failing
    assert "rank0:loss_0" not in failing and "rank0:loss_1" in failing  # same weights at step 0
    assert any("paddle's gradients were not all-reduced" in n for n in result.notes)
    equivalence = dp_equivalence(session)
    assert any(k.startswith("paddle:") for k in _failing(equivalence))
    assert not any(k.startswith("torch:") for k in _failing(equivalence))


@pytest.mark.e2e
def test_loss_scaled_by_world_size_caught(dp_session):
    """DP_ONLY_BUG passes on one card (test_dp_only_bug_passes_on_one_card), fails with 2 ranks."""
    result = backward(_use(dp_session, "dpbug"))
    assert {"rank0:loss_0", "rank1:loss_0", "loss_0"} <= _failing(result)
    assert first_divergence([result]).step == 0


@pytest.mark.e2e
def test_unsynchronized_batchnorm_shows_in_dp_equivalence(dp_session):
    """Both frameworks normalize per shard: torch vs paddle agree, N ranks vs 1 rank does not."""
    session = _use(dp_session, "cnn_train_mode")
    assert backward(session).passed
    equivalence = dp_equivalence(session)
    failing = _failing(equivalence)
    assert "torch:loss_0" in failing and "paddle:loss_0" in failing
    assert any("SyncBatchNorm" in n for n in equivalence.notes)
    out = session.writer.out_dir
    assert (out / "dp_equivalence_1rank.npy").exists() and (out / "dp_equivalence_2rank.npy").exists()


def _fake_group(behaviours: dict) -> WorkerGroup:
    """Workers that speak the protocol without a framework (tests/fake_workers.py)."""
    specs = [WorkerSpec(name, {"behaviour": b}, framework=name.split(".")[0], entry="fake_workers")
             for name, b in behaviours.items()]
    group = WorkerGroup(specs, timeout=20)
    group.start()
    group.call({name: Request(Op.PING) for name in group.names})  # every one up before the real request
    return group


@pytest.mark.e2e
@pytest.mark.parametrize("dead", ["die_soon", "die_later", "sleep"], ids=["dies_at_once", "dies_after", "nobody_dies"])
def test_a_dead_rank_is_named_as_the_cause_not_its_peer(dead):
    """When a rank dies, its peer's collective fails too, at about the same moment; whichever the
    coordinator reads first, the dead rank is reported (with the peer's traceback after it when
    that came first). When nobody died, the failure itself is the cause."""
    group = _fake_group({"torch": "peer_error", "torch.1": dead, "paddle": "sleep"})
    try:
        with pytest.raises(WorkerError) as info:
            group.call({name: Request(Op.TRAIN) for name in group.names})
    finally:
        group.close()
    cause = info.value
    if dead == "sleep":
        assert cause.worker == "torch" and "Connection closed by peer" in str(cause)
    else:
        assert cause.worker == "torch.1" and "exit code 9" in str(cause), str(cause)
        if dead == "die_later":
            assert "Connection closed by peer" in cause.remote_traceback
