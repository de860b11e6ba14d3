"""What a worker's libraries log and what the pair prints never reach the coordinator's console (its
live display, its --json output): log records go to the report's notes with their origin, prints to
worker_<name>.log in the artifacts; a worker that dies still shows its last output."""

import json

import pytest

from conftest import cli

pytestmark = pytest.mark.e2e  # every test here starts workers

CHATTY = '''
import logging, os
import numpy as np
import paddle, torch
from backends.zoo.mlp.pair import build_paddle, make_batch  # noqa: F401

# a library's own logger, as transformers and paddleformers set theirs up: a coloured console
# handler, no propagation to the root; and a log file that must still be written
_lib = logging.getLogger("fakelib")
_console = logging.StreamHandler()
_console.setFormatter(logging.Formatter("\\033[33m[%(levelname)s]\\033[0m %(message)s"))
_lib.addHandler(_console)
_lib.addHandler(logging.FileHandler(os.environ["CHATTY_LOG_FILE"]))
_lib.propagate = False
_lib.setLevel(logging.INFO)


def build_torch():
    _lib.info("fakelib loaded %d kernels", 3)
    logging.getLogger("unconfigured").warning("no handler of its own")  # Python's last-resort handler
    print("a print from build_torch")
    os.write(2, b"a C++ library writing to fd 2\\n")
    from backends.zoo.mlp.pair import build_torch as build
    return build()
'''


def test_logging_and_prints_stay_off_the_console_and_land_in_the_report(make_pair, tmp_path):
    pair = make_pair(CHATTY, '[data]\ninputs = ["x"]\nlabels = ["label"]\n', name="chatty")
    log_file = tmp_path / "fakelib.log"
    proc = cli("run", pair, "--checks", "forward", "--out", tmp_path / "o", "--json",
               env={"CHATTY_LOG_FILE": str(log_file)})
    assert proc.returncode == 0, proc.stderr
    rep = json.loads(proc.stdout)  # nothing the worker printed is mixed into the JSON
    for text in ("fakelib loaded", "no handler of its own", "a print from build_torch", "fd 2"):
        assert text not in proc.stderr, proc.stderr
    notes = rep["warnings"]  # what libraries say goes with the warnings, never among the verdict's notes
    assert any(n.startswith("torch worker logged: INFO fakelib: fakelib loaded 3 kernels (")
               and f"{pair.parent / 'pair.py'}:" in n for n in notes), notes
    assert any(n.startswith("torch worker logged: WARNING unconfigured: no handler of its own") for n in notes), notes
    assert "fakelib loaded 3 kernels" in log_file.read_text()  # a library's log file is its own
    printed = (tmp_path / "o" / "worker_torch.log").read_text()
    assert "a print from build_torch" in printed and "a C++ library writing to fd 2" in printed
    assert "torch worker printed 2 lines: kept in worker_torch.log" in notes


def test_a_worker_that_dies_shows_its_last_output(make_pair, tmp_path):
    pair = make_pair('''
        import os, sys
        from backends.zoo.mlp.pair import build_paddle, make_batch  # noqa: F401

        def build_torch():
            print("allocating the simulated device", file=sys.stderr)
            os._exit(7)
    ''', '[data]\ninputs = ["x"]\nlabels = ["label"]\n', name="dying")
    proc = cli("run", pair, "--checks", "forward", "--out", tmp_path / "o")
    assert proc.returncode == 3, proc.stderr
    assert "torch worker's last output:\n  allocating the simulated device" in proc.stderr
    assert "died during 'setup' (exit code 7)" in proc.stderr
