"""Help text renders literally (square brackets survive), every option shows its default, `run`
has examples, every file it names exists; shell completion is on."""

import re

import click
import pytest
import typer
from typer.testing import CliRunner

from conftest import ROOT
from harness.cli import app

runner = CliRunner()
COMMAND = typer.main.get_command(app)
ACTIONS = {"help", "version", "install_completion", "show_completion"}  # do something, set nothing


def _help(*args) -> str:
    res = runner.invoke(app, [*args, "--help"], prog_name="reprod-harness", terminal_width=200)
    assert res.exit_code == 0, res.output
    return res.output


def test_run_help_keeps_square_brackets_and_has_examples():
    text = _help("run")
    # click puts a described default (not a value) in parentheses
    for literal in ("Artifacts folder.  [default: (artifacts/<name>)]", "Override [train] iters",
                    "[default: ([distributed] nprocs); x>=1]", "[default: 900.0; x>=1.0]", "[default: (off)]"):
        assert literal in text, text
    assert "Examples:" in text and "  reprod-harness run --zoo mlp --checks forward,loss --out /tmp/mlp" in text
    assert "DESIGN.md" not in text


@pytest.mark.parametrize("name", sorted(COMMAND.commands))
def test_every_option_shows_its_default(name):
    command = COMMAND.commands[name]
    ctx = click.Context(command, info_name=name, obj={})
    for param in command.params:
        if param.name in ACTIONS or not isinstance(param, click.Option):
            continue
        record = param.get_help_record(ctx)
        assert record and ("[default: " in record[1] or "required" in record[1]), (name, param.name, record)


@pytest.mark.parametrize("name", sorted(COMMAND.commands))
def test_help_names_only_files_in_this_repository(name):
    for path in re.findall(r"[\w./-]+\.md\b", _help(name)):
        assert (ROOT / path).is_file(), f"{name} --help names {path}, which is not in the repository"


def test_shell_completion_is_enabled(monkeypatch):
    import typer.completion

    root = _help()
    assert "--install-completion" in root and "--show-completion" in root
    # --show-completion is a flag that detects the shell from the process tree (shellingham), which
    # finds none when pytest was not started from a shell: the test says which shell it is
    monkeypatch.setattr(typer.completion, "_get_shell_name", lambda: "bash")
    res = runner.invoke(app, ["--show-completion"], prog_name="reprod-harness")
    assert res.exit_code == 0 and "_REPROD_HARNESS_COMPLETE=complete_bash" in res.output, res.output
