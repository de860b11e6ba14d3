"""Work done once and cores shared: the loss check reuses the forward check's eval forward of
the same batch, and a worker whose counterpart has nothing left to do takes over its cores
(backends/worker.CoreShare), unless --threads fixes the count."""

import collections
import types

import multiprocess as mp
import pytest

from backends.worker import CoreShare
from conftest import cli, report
from harness.session import usable_cores
from harness.workers.protocol import Op, Request

COUNTING = '''
import os
import numpy as np


def _note(side, what):
    with open(os.path.join(os.environ["REPROD_TEST_LOG"], side), "a") as f:
        f.write(what + "\\n")


def build_torch():
    import torch
    return torch.nn.Linear(4, 3)


def build_paddle():
    import paddle
    return paddle.nn.Linear(4, 3)


def forward_torch(model, batch):
    import time
    import torch
    _note("torch", f"forward grad={torch.is_grad_enabled()} threads={torch.get_num_threads()}")
    if torch.is_grad_enabled() and os.environ.get("REPROD_TEST_SLOW_TORCH"):
        time.sleep(0.3)  # a slow reference: paddle is done long before it
    return model(batch["x"])


def forward_paddle(model, batch):
    _note("paddle", "forward")
    return model(batch["x"])


if os.environ.get("REPROD_TEST_OWN_MAPPING"):
    def torch_to_paddle(state):
        return {k: v.T if k.endswith("weight") else v for k, v in state.items()}


def make_batch(rng, step):
    return {"x": rng.standard_normal((5, 4)).astype("float32"), "label": rng.integers(0, 3, 5).astype("int64")}
'''
TOML = '[data]\nlabels = ["label"]\n[train]\niters = 8\n'


def _log(folder, side) -> list:
    return (folder / side).read_text().splitlines() if (folder / side).exists() else []


def _run(toml, folder, *args, **env) -> dict:
    """A run into folder/o whose pair notes each forward into folder/<side>; its report.json."""
    folder.mkdir()
    proc = cli("run", toml, "--out", folder / "o", *args, env={"REPROD_TEST_LOG": str(folder), **env})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return report(folder / "o")


@pytest.mark.e2e
def test_the_loss_check_reuses_the_forward_checks_forward(make_pair, tmp_path):
    log = tmp_path / "log"
    rep = _run(make_pair(COUNTING, TOML), log, "--checks", "forward,loss")
    assert [c["name"] for c in rep["checks"]] == ["forward", "loss"] and rep["aligned"]
    # the set-up's traced forward, which pairs the modules, then one for both checks
    assert len(_log(log, "paddle")) == 2
    assert len(_log(log, "torch")) == 2


@pytest.mark.e2e
def test_a_pair_that_converts_its_own_weights_is_traced_only_to_locate(make_pair, tmp_path):
    toml = make_pair(COUNTING, TOML)
    counts: dict = {}
    for name, extra in (("plain", []), ("located", ["--locate"])):
        log = tmp_path / name
        rep = _run(toml, log, "--checks", "forward,loss", *extra, REPROD_TEST_OWN_MAPPING="1")
        assert rep["aligned"] and rep["weight_map"]["custom"] == "torch_to_paddle"
        counts[name] = ["grad=True" in line for line in _log(log, "torch")]
    # the pair converts its weights: no call order is traced for them, and the forward check's
    # forward serves the loss check too
    assert counts["plain"] == [False]
    # localization matches modules by call order: traced once when it starts (with grad on, as at
    # set-up), before its own eval-mode step
    assert counts["located"] == [False, True, False]


@pytest.mark.e2e
def test_the_loss_check_alone_computes_its_forward(make_pair, tmp_path):
    log = tmp_path / "log"
    _run(make_pair(COUNTING, TOML), log, "--checks", "loss,backward")
    assert len(_log(log, "paddle")) == 1 + 1 + 8  # traced forward, the loss, the 8 steps


def test_core_share_divides_the_budget_among_the_workers_with_work():
    working, applied = mp.get_context("spawn").RawArray("b", [0, 0]), {"a": [], "b": []}
    a, b = CoreShare(working, 0, 4), CoreShare(working, 1, 4)
    a.apply, b.apply = applied["a"].append, applied["b"].append
    a.busy(True)
    a.update()
    assert applied["a"] == [4]  # alone: every core
    b.busy(True)
    a.update()
    b.update()
    assert applied == {"a": [4, 2], "b": [2]}
    b.busy(False)
    a.update()
    a.update()
    assert applied["a"] == [4, 2, 4]  # b done: its cores back, applied once


def test_a_submission_marks_every_worker_before_any_request_is_sent():
    """Both sides' requests of one submission: neither worker may read the other as idle in the
    moment before the other's request arrives (it would size its pool for every core)."""
    from harness.workers.process import WorkerGroup, WorkerSpec

    group = WorkerGroup([WorkerSpec("a", {}), WorkerSpec("b", {})], timeout=5.0)
    seen = []

    class Outbox:
        def put(self, msg):
            seen.append(list(group._working))

    group._working = mp.get_context("spawn").RawArray("b", [0, 0])
    group.workers = {name: types.SimpleNamespace(slot=i, inflight=collections.deque(), outbox=Outbox(),
                                                 active_since=0.0)
                     for i, name in enumerate("ab")}
    group.submit({"a": Request(Op.PING, {}), "b": Request(Op.PING, {})})
    assert seen == [[1, 1], [1, 1]]


def test_core_share_without_a_budget_never_changes_the_threads():
    share, applied = CoreShare(None, 0, None), []
    share.apply = applied.append
    share.busy(True)
    share.update()
    assert applied == []


@pytest.mark.e2e
@pytest.mark.skipif(usable_cores() < 2, reason="one core: there is nothing to take over")
@pytest.mark.parametrize("fixed", [False, True], ids=["shared", "--threads 1"])
def test_the_slower_worker_takes_over_the_idle_workers_cores(make_pair, tmp_path, fixed):
    log = tmp_path / "log"
    _run(make_pair(COUNTING, TOML), log, "--checks", "backward", *(["--threads", "1"] if fixed else []),
         REPROD_TEST_SLOW_TORCH="1")
    steps = [line for line in _log(log, "torch") if "grad=True" in line][1:]  # after the set-up's traced forward
    assert len(steps) == 8
    counts = [int(line.rsplit("=", 1)[1]) for line in steps]
    if fixed:
        assert counts == [1] * 8
    else:  # paddle's 8 steps take milliseconds: by torch's last step it has nothing left to do
        assert counts[-1] == usable_cores(), counts
