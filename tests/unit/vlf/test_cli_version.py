"""`vlf --version` prints the installed package's version, as users check it in bug reports."""

from importlib.metadata import version

from typer.testing import CliRunner

from vlf.cli import app


def test_version_prints_the_installed_version_and_exits_0():
    result = CliRunner().invoke(app, ["--version"])

    assert result.exit_code == 0 and result.output.strip() == f"vlf {version('vlfeedback')}"


def test_no_arguments_still_show_the_commands():
    result = CliRunner().invoke(app, [])

    assert "train" in result.output and "eval" in result.output
