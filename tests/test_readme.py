"""The README's example pair runs as printed, and its commands name things that exist."""

import re

import pytest

from conftest import ROOT, cli, report

README = (ROOT / "README.md").read_text()


def _block(lang: str, first_line: str) -> str:
    for body in re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S):
        if body.startswith(first_line):
            return body
    raise AssertionError(f"README has no ```{lang} block starting with {first_line!r}")


@pytest.mark.e2e
def test_readme_example_pair_is_aligned(tmp_path):
    (tmp_path / "pair.py").write_text(_block("python", "# pair.py"))
    (tmp_path / "pair.toml").write_text(_block("toml", "# pair.toml"))
    proc = cli("run", tmp_path / "pair.toml", "--out", tmp_path / "out")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert report(tmp_path / "out")["aligned"] is True


def test_readme_states_the_two_commands():
    assert 'pip install -e ".[all]" && reprod-harness demo' in README
    assert 'pip install -e ".[all,test]" && pytest' in README


def test_readme_optimizer_table_is_generated_from_the_code():
    from harness.config.optim_table import markdown

    start, end = "<!-- optim-table:start -->\n", "<!-- optim-table:end -->"
    assert README[README.index(start) + len(start):README.index(end)] == markdown()
