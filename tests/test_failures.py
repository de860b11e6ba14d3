"""A worker that raises, dies or hangs ends the run with exit 3, its cause shown, nothing left running."""

import time
import uuid

import pytest

from conftest import cli, tagged_processes

pytestmark = pytest.mark.e2e  # every test here starts workers

BASE = """
import os, time
import numpy as np
import torch, paddle

def build_torch():
    {torch_body}
    return torch.nn.Linear(4, 2)

def build_paddle():
    {paddle_body}
    return paddle.nn.Linear(4, 2)

def make_batch(rng, step):
    return {{"x": rng.standard_normal((3, 4), dtype=np.float32), "label": np.zeros(3, dtype=np.int64)}}
"""


def _pair(make_pair, torch_body="pass", paddle_body="pass"):
    return make_pair(BASE.format(torch_body=torch_body, paddle_body=paddle_body), '[data]\ninputs = ["x"]\n')


def _run_tagged(*args):
    tag = uuid.uuid4().hex
    start = time.monotonic()
    proc = cli(*args, env={"REPROD_TEST_TAG": tag}, timeout=120)
    return proc, time.monotonic() - start, tag


@pytest.mark.parametrize(
    "side,body,expect",
    [
        ("paddle", "raise ValueError('boom in build_paddle')", "ValueError: boom in build_paddle"),
        ("torch", "os._exit(7)", "exit code 7"),
        # torch code on the paddle side by mistake: the pair's `torch` is a stand-in there, loud when used
        ("paddle", "paddle.ones([1]) * torch.ones(1)",
         "MissingFrameworkError: torch.ones(...) was used in the paddle worker, where torch is not loaded"),
    ],
    ids=["raises", "os_exit", "torch_on_the_paddle_side"],
)
def test_worker_failure_exits_3_and_leaves_nothing(make_pair, tmp_path, side, body, expect):
    toml = _pair(make_pair, **{f"{side}_body": body})
    proc, seconds, tag = _run_tagged("run", toml, "--out", tmp_path / "out", "--timeout", "60")
    assert proc.returncode == 3, proc.stderr
    assert expect in proc.stderr
    if side == "paddle":  # the user's file and line are in the worker's traceback
        assert f'{toml.parent / "pair.py"}", line 11, in build_paddle' in proc.stderr
    assert f"{side} worker" in proc.stderr
    assert "Traceback" not in proc.stderr.split(f"{side} worker")[-1]  # no coordinator traceback after it
    assert not (tmp_path / "out" / "report.json").exists()  # no report claims a run that did not finish
    assert tagged_processes(tag) == []


def test_hanging_worker_times_out(make_pair, tmp_path):
    toml = _pair(make_pair, paddle_body="time.sleep(600)")
    proc, seconds, tag = _run_tagged("run", toml, "--out", tmp_path / "out", "--startup-timeout", "20")
    assert proc.returncode == 3, proc.stderr
    assert "paddle worker: no answer to 'setup' within 20 s" in proc.stderr and "--startup-timeout" in proc.stderr
    assert f'{toml.parent / "pair.py"}", line 11 in build_paddle' in proc.stderr  # where it hung
    assert seconds < 60
    assert tagged_processes(tag) == []
