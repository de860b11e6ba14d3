"""Every process a run starts ends with it, and every deadline applies wherever the pair's code runs.

The pair's code runs in the workers and in the data worker (its import and make_batch), never in
the coordinator: a process it starts at import, a daemon that leaves its process group and
double-forks, a hang in the import or in make_batch, a coordinator SIGKILLed while its workers
start: each is tried here as a user's pair would do it, through the CLI.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from conftest import ROOT, cli, line_of, tagged_processes

PAIR = '''
import os, subprocess, sys, time
import numpy as np
import torch, paddle

FAULT = os.environ.get("REPROD_FAULT", "")


def daemon():
    """setsid and a double fork: the classic way out of every process group and parent."""
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            time.sleep(600)
        os._exit(0)


if FAULT == "import:popen":
    subprocess.Popen(["sleep", "600"])
if FAULT == "import:daemon":
    daemon()
if FAULT == "import:hang":
    time.sleep(600)


def _mark(where):
    if os.environ.get("REPROD_MARKS"):
        open(os.path.join(os.environ["REPROD_MARKS"], f"{where}-{os.getpid()}"), "w").close()


def build_torch():
    _mark("build_torch")
    if FAULT == "build:daemon":
        daemon()
    torch.manual_seed(0)
    return torch.nn.Linear(4, 3)


def build_paddle():
    _mark("build_paddle")
    return paddle.nn.Linear(4, 3)


def make_batch(rng, step):
    if FAULT == f"make_batch:hang:{step}":
        time.sleep(600)
    return {"x": rng.standard_normal((4, 4), dtype=np.float32), "label": rng.integers(0, 3, 4)}
'''
TOML = '[data]\ninputs = ["x"]\n[train]\niters = 2\n'


@pytest.fixture
def pair(make_pair):
    return make_pair(PAIR, TOML, name="procs")


def _run(pair, out, fault, *args, timeout=120):
    tag = uuid.uuid4().hex
    proc = cli("run", pair, "--out", out, *args, timeout=timeout, env={"REPROD_TEST_TAG": tag, "REPROD_FAULT": fault})
    return proc, tag


def _left(tag: str, within: float = 3.0) -> list:
    """Tagged processes still there after `within` seconds at most."""
    deadline = time.monotonic() + within
    while (left := tagged_processes(tag)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


@pytest.mark.e2e
@pytest.mark.parametrize("fault", ["import:popen", "import:daemon", "build:daemon"])
def test_nothing_the_pair_starts_outlives_the_run(pair, tmp_path, fault):
    """A process started at the pair's import (which every worker and the data worker runs), or a
    daemon that leaves its group by setsid and a double fork, is gone when the run exits 0."""
    proc, tag = _run(pair, tmp_path / "out", fault, "--checks", "forward")
    assert proc.returncode == 0, proc.stderr
    assert _left(tag) == []


@pytest.mark.e2e
@pytest.mark.parametrize("fault,args,expect", [
    ("import:hang", ("--startup-timeout", "5"),
     "error: data worker: no answer to 'import of pair.py' within 5 s (start-up; raise --startup-timeout if that "
     "is just slow)"),
    ("make_batch:hang:0", ("--startup-timeout", "5"),
     "error: data worker: no answer to 'make_batch(step=0)' within 5 s (start-up; raise --startup-timeout if that "
     "is just slow)"),
    ("make_batch:hang:1", ("--timeout", "4"),
     "error: data worker: no answer to 'make_batch(step=1)' within 4 s (raise --timeout if make_batch is just slow)"),
], ids=["import", "first batch", "a later batch"])
def test_a_hang_in_the_pairs_data_side_meets_its_deadline_with_the_stack(pair, tmp_path, fault, args, expect):
    start = time.monotonic()
    proc, tag = _run(pair, tmp_path / "out", fault, "--checks", "forward,backward", *args, timeout=90)
    took = time.monotonic() - start
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == expect
    assert "data worker was here when it did not answer" in proc.stderr
    hung_at = 1 + line_of(PAIR, 'FAULT == "import:hang"' if fault.startswith("import") else "make_batch:hang:{step}")
    assert f'File "{pair.parent / "pair.py"}", line {hung_at} in ' in proc.stderr, proc.stderr
    assert took < 40, f"the deadline message came {took:.1f} s after the start"
    assert not (tmp_path / "out").exists()
    assert _left(tag) == []


@pytest.mark.e2e
@pytest.mark.parametrize("after", [0.0, 0.15, 0.4])
def test_a_sigkilled_coordinators_workers_run_no_user_code(pair, tmp_path, after):
    """SIGKILL just as the workers start: none runs the pair's build_* afterwards (a worker whose
    parent died before its parent-death signal was armed leaves at once), and every process of
    the run is gone within a few seconds."""
    marks, tag = tmp_path / "marks", uuid.uuid4().hex
    marks.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "harness", "run", str(pair), "--out", str(tmp_path / "out"),
                             "--checks", "forward"], cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            text=True, env=dict(os.environ, REPROD_TEST_TAG=tag, REPROD_MARKS=str(marks),
                                                PYTHONUNBUFFERED="1"))
    for line in proc.stderr:
        if "starting the torch and paddle workers" in line:
            break
    time.sleep(after)
    proc.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    proc.wait(timeout=10)
    assert _left(tag, within=8.0) == []
    gone = time.monotonic() - killed
    time.sleep(max(0.0, 3.0 - gone))  # a worker that would still run build_* has had the time to
    assert list(marks.iterdir()) == []  # the frameworks' import alone takes longer than `after`
