"""Shared test helpers: real CLI runs in subprocesses, and small pair folders written on the fly.

Tests that start worker processes (directly or through the CLI) are marked `e2e`;
`pytest -m "not e2e"` runs the rest in seconds.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAIRS = Path(__file__).resolve().parent / "pairs"

# HF transformers vs PaddleNLP pairs: skipped where the libraries are missing, unless
# REPROD_REQUIRE_EXAMPLES is set (CI installs them and sets it, which turns the skip into a failure)
needs_bert_libs = pytest.mark.skipif(
    not all(importlib.util.find_spec(m) is not None for m in ("transformers", "paddlenlp"))
    and not os.environ.get("REPROD_REQUIRE_EXAMPLES"),
    reason="needs the examples extra + paddlenlp (CI installs them and sets REPROD_REQUIRE_EXAMPLES=1)")


def cli(*args, cwd=None, timeout=300, env=None) -> subprocess.CompletedProcess:
    """`python -m harness ARGS` in a fresh interpreter, as a user would run it."""
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", COLUMNS="160")
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "harness", *map(str, args)],
        cwd=cwd or ROOT, capture_output=True, text=True, timeout=timeout, env=full_env,
    )


def tagged_processes(tag: str) -> list:
    """Pids of live processes whose environment holds REPROD_TEST_TAG=tag (workers and their children)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if f"REPROD_TEST_TAG={tag}".encode() in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def line_of(source: str, snippet: str) -> int:
    """The line of a pair's source text that holds snippet (as a traceback numbers it)."""
    return next(i for i, line in enumerate(source.splitlines(), 1) if snippet in line)


def report(out_dir: Path) -> dict:
    return json.loads((Path(out_dir) / "report.json").read_text())


def check(rep: dict, name: str) -> dict:
    return next(c for c in rep["checks"] if c["name"] == name)


def pair_folder(root: Path, name: str, pair_py: str, toml_body: str = "") -> Path:
    """root/name/{pair.py, pair.toml}; returns the TOML's path."""
    folder = Path(root) / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pair.py").write_text(textwrap.dedent(pair_py))
    (folder / "pair.toml").write_text(f'name = "{name}"\npair = "pair.py"\n' + textwrap.dedent(toml_body))
    return folder / "pair.toml"


@pytest.fixture
def make_pair(tmp_path):
    """make_pair(pair_py, toml_body) -> path of pair.toml in a fresh folder."""

    def _make(pair_py: str, toml_body: str = "", name: str = "t") -> Path:
        return pair_folder(tmp_path, name, pair_py, toml_body)

    return _make


@pytest.fixture(scope="session")
def worker_pythons() -> tuple:
    """(torch, paddle): the interpreters of two environments, one per framework, as the README sets
    them up (.ci/worker_envs DIR builds them: torch + transformers 5, paddlepaddle + paddleformers),
    named by REPROD_TEST_TORCH_PYTHON and REPROD_TEST_PADDLE_PYTHON. Without them the test skips
    with the reason, except in CI or with REPROD_REQUIRE_EXAMPLES=1, where it fails."""
    pythons = tuple(os.environ.get(f"REPROD_TEST_{side}_PYTHON", "") for side in ("TORCH", "PADDLE"))
    if all(pythons):
        absent = [p for p in pythons if not os.access(p, os.X_OK)]
        if absent:
            pytest.fail(f"REPROD_TEST_*_PYTHON: {', '.join(absent)}: no such interpreter")
        return pythons
    why = ("needs two environments, one per framework: set REPROD_TEST_TORCH_PYTHON and REPROD_TEST_PADDLE_PYTHON "
           "(`.ci/worker_envs DIR` builds them and prints the two exports)")
    if os.environ.get("REPROD_REQUIRE_EXAMPLES") or os.environ.get("CI"):
        pytest.fail(why)
    pytest.skip(why)
