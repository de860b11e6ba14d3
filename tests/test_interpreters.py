"""One environment per framework: each worker in the interpreter it is given (--torch-python,
--paddle-python, [workers]), the handshake that stops a run whose interpreters would not understand
each other (exit 2 naming both values), and the bad paths (exit 2 naming the flag or key)."""

import glob
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, check, cli, report
from harness import __version__, api
from harness.config import parse
from harness.errors import ConfigError, UsageError
from harness.workers import interpreters
from harness.workers.interpreters import Interpreter

TODAYS_LIBS = Path(__file__).resolve().parent / "pairs" / "todays_libs" / "pair.toml"


def wrapper(folder: Path, name: str, *, shadow: dict | None = None, flags: str = "", log: Path | None = None) -> Path:
    """An interpreter as a user may give one: a script that runs this Python, with `shadow`
    (module name -> its source) first on its path, as another environment's packages would be."""
    lines = ["#!/bin/sh"]
    if shadow:
        site = folder / f"{name}-site"
        for module, source in shadow.items():
            (site / module).mkdir(parents=True, exist_ok=True)
            (site / module / "__init__.py").write_text(source)
        lines.append(f'export PYTHONPATH="{site}:$PYTHONPATH"')
    if log:
        lines.append(f'echo "$@" >> "{log}"')
    lines.append(f'exec "{sys.executable}" {flags} "$@"')
    path = folder / name
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o755)
    return path


def _other_major(version: str) -> str:
    return "1.26.4" if int(version.split(".")[0]) >= 2 else "2.0.0"


# ---------------------------------------------------------------- where the interpreters come from

def test_workers_paths_are_relative_to_the_toml(tmp_path):
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "pair.py").write_text("def make_batch(rng, step): pass\n")
    (tmp_path / "cfg" / "pair.toml").write_text('pair = "pair.py"\n[workers]\ntorch_python = "../envs/t/bin/python"\n')
    cfg = parse.load(tmp_path / "cfg" / "pair.toml")
    assert cfg.workers.torch_python == str(tmp_path / "cfg" / "../envs/t/bin/python")
    assert cfg.workers.paddle_python is None


@pytest.mark.parametrize("body,needle", [
    ('[workers]\ntorch_pyhton = "x"\n', "pair.toml:3: workers.torch_pyhton: unknown key 'torch_pyhton' in [workers] "
                                        "(did you mean 'torch_python'?)"),
    ('[workers]\npaddle_interpreter = "x"\n', "did you mean 'paddle_python'"),
    ('[workers]\ntorch_python = 3\n', "pair.toml:3: workers.torch_python: expected a string, got int 3"),
    ('[worker]\ntorch_python = "x"\n', "unknown key 'worker' (did you mean 'workers'?)"),
])
def test_workers_section_typos_and_types_name_the_key(tmp_path, body, needle):
    (tmp_path / "pair.py").write_text("def make_batch(rng, step): pass\n")
    (tmp_path / "pair.toml").write_text('pair = "pair.py"\n' + body)
    with pytest.raises(ConfigError) as info:
        parse.load(tmp_path / "pair.toml")
    assert needle in str(info.value), str(info.value)


def test_the_flag_wins_over_the_toml_and_a_missing_interpreter_names_its_flag(tmp_path):
    (tmp_path / "pair.py").write_text("def make_batch(rng, step): pass\n")
    (tmp_path / "pair.toml").write_text('pair = "pair.py"\n[workers]\ntorch_python = "nowhere/python"\n')
    cfg = parse.load(tmp_path / "pair.toml")
    chosen = api.interpreters(cfg, torch_python=sys.executable)
    assert chosen == {"torch": Interpreter(sys.executable, "--torch-python")}
    with pytest.raises(UsageError) as info:
        api.options(cfg, torch_python=sys.executable, paddle_python=tmp_path / "absent" / "python")
    assert str(info.value).startswith(f"--paddle-python: {tmp_path / 'absent' / 'python'}: not found")


def test_a_missing_interpreter_from_the_toml_names_the_file_line_and_key(tmp_path):
    (tmp_path / "pair.py").write_text("def make_batch(rng, step): pass\n")
    (tmp_path / "pair.toml").write_text('pair = "pair.py"\n\n[workers]\npaddle_python = "envs/paddle/bin/python"\n')
    with pytest.raises(UsageError) as info:
        api.options(parse.load(tmp_path / "pair.toml"))
    assert str(info.value).startswith(f"{tmp_path / 'pair.toml'}:4: workers.paddle_python: "
                                      f"{tmp_path / 'envs/paddle/bin/python'}: not found"), str(info.value)


def test_a_folder_or_a_program_that_is_no_python_is_refused(tmp_path):
    with pytest.raises(UsageError, match="--torch-python: .*: not an executable file"):
        Interpreter.given(tmp_path, "--torch-python")
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'this is no python' >&2\nexit 1\n")
    fake.chmod(0o755)
    with pytest.raises(UsageError) as info:
        interpreters.handshake({"paddle": Interpreter.given(fake, "--paddle-python")})
    assert str(info.value) == f"--paddle-python: {fake}: not a Python interpreter that runs (this is no python)"


# ---------------------------------------------------------------- the handshake

def test_the_coordinators_own_interpreter_needs_no_probe():
    found = interpreters.handshake({})
    assert found["torch"] == found["paddle"]
    assert found["torch"]["executable"] == sys.executable and found["torch"]["harness"] == __version__


def test_another_harness_version_stops_the_run_naming_both(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not this checkout: `python -c` puts the working folder first on the path
    other = wrapper(tmp_path, "python", shadow={"harness": '__version__ = "9.9.9"\n'})
    with pytest.raises(UsageError) as info:
        interpreters.handshake({"torch": Interpreter.given(other, "--torch-python")})
    message = str(info.value)
    assert message.startswith(f"the reprod-harness version differs: the torch worker (--torch-python {other}) has "
                              f"9.9.9, the paddle worker (the coordinator's interpreter) has {__version__}"), message


def test_the_workers_numpy_major_versions_must_agree(tmp_path):
    fake = _other_major(np.__version__)
    other = wrapper(tmp_path, "python", shadow={"numpy": f'__version__ = "{fake}"\n'})
    with pytest.raises(UsageError) as info:
        interpreters.handshake({"paddle": Interpreter.given(other, "--paddle-python")})
    message = str(info.value)
    assert "numpy major version differs" in message and f"has {np.__version__}" in message, message
    assert f"(--paddle-python {other}) has {fake}" in message


def test_the_coordinator_must_read_the_workers_arrays(tmp_path):
    if int(np.__version__.split(".")[0]) < 2:
        pytest.skip("the coordinator's numpy is 1.x: reads any 1.x worker's arrays")
    old = wrapper(tmp_path, "python", shadow={"numpy": '__version__ = "1.25.2"\n'})
    chosen = {side: Interpreter.given(old, f"--{side}-python") for side in ("torch", "paddle")}
    with pytest.raises(UsageError) as info:
        interpreters.handshake(chosen)
    assert f"the numpy version differs: the torch worker (--torch-python {old}) has 1.25.2, the coordinator " \
           f"({sys.executable}) has {np.__version__}" in str(info.value)


def test_numpy_126_beside_2_is_readable_both_ways():
    assert interpreters._readable("1.26.4", "2.4.6") and interpreters._readable("2.0.0", "1.26.0")
    assert not interpreters._readable("1.25.2", "2.4.6")


def test_another_python_minor_version_is_named_first(tmp_path):
    mine = "%d.%d" % sys.version_info[:2]
    others = [p for p in sorted(glob.glob("/root/.pyenv/versions/3.*/bin/python3.*") + glob.glob("/usr/bin/python3.*"))
              if Path(p).name.count(".") == 1 and not Path(p).name.endswith(mine) and Path(p).name[-1].isdigit()]
    if not others:
        pytest.skip("no Python of another minor version on this machine")
    with pytest.raises(UsageError) as info:
        interpreters.handshake({"torch": Interpreter.given(others[0], "--torch-python")})
    assert str(info.value).startswith(f"the Python minor version differs: the torch worker (--torch-python "
                                      f"{others[0]}) has 3."), str(info.value)
    assert f"has {sys.version_info[0]}.{sys.version_info[1]}." in str(info.value)


def test_an_environment_without_the_harness_deps_says_how_to_install_it(tmp_path):
    bare = wrapper(tmp_path, "python", flags="-S")  # no site-packages: no numpy there
    with pytest.raises(UsageError) as info:
        interpreters.handshake({"torch": Interpreter.given(bare, "--torch-python")})
    message = str(info.value)
    assert message.startswith(f"--torch-python: {bare}: cannot import numpy: ModuleNotFoundError"), message
    assert f"{bare} -m pip install -e {ROOT}" in message


@pytest.mark.e2e  # starts a process (the data worker, or the CLI)
def test_run_stops_before_any_worker_with_exit_2(tmp_path):
    other = wrapper(tmp_path, "python", shadow={"harness": '__version__ = "9.9.9"\n'})
    proc = cli("run", "--zoo", "mlp", "--paddle-python", other, "--out", tmp_path / "o", cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "reprod-harness version differs" in proc.stderr and "9.9.9" in proc.stderr
    assert "starting the torch and paddle workers" not in proc.stderr
    assert not (tmp_path / "o" / "report.json").exists()
    proc = cli("run", "--zoo", "mlp", "--torch-python", tmp_path / "nope", timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: --torch-python: {tmp_path / 'nope'}: not found (the Python "
                                                "interpreter of a worker's environment, like .venv-torch/bin/python)"]


def test_doctor_reads_the_workers_of_a_pair_and_names_a_missing_one(tmp_path):
    (tmp_path / "pair.py").write_text("def make_batch(rng, step): pass\n")
    (tmp_path / "pair.toml").write_text('pair = "pair.py"\n[workers]\ntorch_python = "envs/t/bin/python"\n')
    proc = cli("doctor", "--pair", tmp_path / "pair.toml", timeout=120)
    assert proc.returncode == 2
    assert f"pair.toml:3: workers.torch_python: {tmp_path / 'envs/t/bin/python'}: not found" in proc.stderr


# ---------------------------------------------------------------- workers started in them

@pytest.mark.e2e
def test_every_rank_starts_in_its_frameworks_interpreter(tmp_path):
    """Each framework's ranks in the interpreter given for it, and only there."""
    logs = {side: tmp_path / f"{side}.log" for side in ("torch", "paddle")}
    pythons = {side: wrapper(tmp_path, f"{side}-python", log=logs[side]) for side in logs}
    proc = cli("run", "--zoo", "mlp", "--checks", "forward", "--nprocs", "2", "--out", tmp_path / "o",
               "--torch-python", pythons["torch"], "--paddle-python", pythons["paddle"], timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for side, log in logs.items():
        spawned = [line for line in log.read_text().splitlines() if "--multiprocessing-fork" in line]
        assert len(spawned) == 2, (side, log.read_text())  # rank 0 and rank 1; the probe is no worker
    env = report(tmp_path / "o")["environment"]
    assert env["interpreters"]["torch"]["harness"] == __version__


@pytest.mark.e2e
def test_a_pair_of_todays_libraries_runs_across_two_environments(tmp_path, worker_pythons):
    """transformers 5 on the torch side, PaddleFormers on the paddle side: two environments, one
    run, aligned; what the libraries log lands in the notes with its origin, not on the console."""
    torch_python, paddle_python = worker_pythons
    proc = cli("run", TODAYS_LIBS, "--out", tmp_path / "o", "--torch-python", torch_python,
               "--paddle-python", paddle_python, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rep = report(tmp_path / "o")
    assert check(rep, "backward")["passed"]
    found = rep["environment"]["interpreters"]
    assert found["torch"]["prefix"] == str(Path(torch_python).parents[1])
    assert found["paddle"]["prefix"] == str(Path(paddle_python).parents[1])
    logged = [n for n in rep["warnings"] if n.startswith("paddle worker logged: WARNING ")]
    assert any("PaddleFormers" in n and "paddleformers/__init__.py:" in n for n in logged), rep["warnings"]
    assert "is_torch_available" not in proc.stderr  # paddleformers' warning, never over the display


@pytest.mark.e2e
def test_doctor_shows_each_workers_interpreter_and_versions(worker_pythons):
    torch_python, paddle_python = worker_pythons
    proc = cli("doctor", "--torch-python", torch_python, "--paddle-python", paddle_python, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    for side, python in (("torch", torch_python), ("paddle", paddle_python)):
        at = next(i for i, line in enumerate(lines) if line.startswith(f"{side} "))
        assert "devices:" in lines[at], proc.stdout
        assert f"worker python: {python} (Python 3." in lines[at + 1] and "reprod-harness" in lines[at + 1]


@pytest.mark.e2e
def test_convert_starts_its_workers_in_the_given_interpreters(tmp_path):
    import subprocess

    # in a fresh process: this one may hold the zoo module loaded with torch stood in for
    subprocess.run([sys.executable, "-c", "import sys, torch; from backends.zoo.mlp.pair import build_torch; "
                    "torch.save(build_torch().state_dict(), sys.argv[1])", str(tmp_path / "w.pt")],
                   check=True, cwd=ROOT, timeout=120)
    logs = {side: tmp_path / f"{side}.log" for side in ("torch", "paddle")}
    pythons = {side: wrapper(tmp_path, f"{side}-python", log=logs[side]) for side in logs}
    proc = cli("convert", "--pair", ROOT / "backends" / "zoo" / "mlp" / "pair.toml", "--torch-weights", tmp_path / "w.pt",
               "--out", tmp_path / "w.pdparams", "--torch-python", pythons["torch"], "--paddle-python", pythons["paddle"])
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "w.pdparams").is_file()
    for log in logs.values():
        assert "--multiprocessing-fork" in log.read_text()


def test_ci_builds_the_two_environments_with_the_cpu_torch():
    assert ".ci/worker_envs" in (ROOT / ".ci" / "run").read_text()
    built = (ROOT / ".ci" / "worker_envs").read_text()
    assert "REPROD_TEST_TORCH_PYTHON" in built and "REPROD_TEST_PADDLE_PYTHON" in built
    assert "torch==2.13.0" in built  # never a bare torch: that would fetch a multi-GB CUDA build


def test_the_readme_workers_table_parses_as_printed(tmp_path):
    import re

    readme = (ROOT / "README.md").read_text()
    block = next(b for b in re.findall(r"```toml\n(.*?)```", readme, flags=re.S) if b.startswith("[workers]"))
    (tmp_path / "pair.py").write_text("def make_batch(rng, step): pass\n")
    (tmp_path / "pair.toml").write_text('pair = "pair.py"\n' + block)
    cfg = parse.load(tmp_path / "pair.toml")
    assert cfg.workers.torch_python == str(tmp_path / ".venv-torch/bin/python")
    assert cfg.workers.paddle_python == str(tmp_path / ".venv-paddle/bin/python")
