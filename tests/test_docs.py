"""Every command has help with a runnable example, and the README shows it."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from audit.cli import cli

README = (Path(__file__).resolve().parents[1] / "README.md").read_text("utf-8")


def command_paths(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = []
    for name, command in group.commands.items():
        path = prefix + (name,)
        paths.append(path)
        if isinstance(command, click.Group):
            paths += command_paths(command, path)
    return paths


@pytest.mark.parametrize("path", command_paths(cli), ids=lambda p: " ".join(p))
def test_command_has_help_with_example_and_is_in_readme(path):
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output or "example" in result.output, (
        f"`audit {' '.join(path)} --help` has no example"
    )
    assert f"audit {' '.join(path)}" in README, f"README has no `audit {' '.join(path)}`"


def test_readme_names_the_two_commands_and_ci_runs_the_test_one():
    assert "make demo" in README and "make test" in README
    ci = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
    assert "make test" in ci


def test_bad_workspace_is_one_clear_line_and_exit_1(tmp_path):
    result = CliRunner().invoke(cli, ["status", str(tmp_path / "nowhere")])
    assert result.exit_code == 1
    assert "not an audit workspace" in result.output and "Traceback" not in result.output
