from __future__ import annotations

import subprocess
import sys

import pytest

from kubemaas.cli import SUBCOMMANDS, main


def test_every_documented_subcommand_is_dispatched() -> None:
    assert set(SUBCOMMANDS) == {"serve", "operator", "train", "cluster", "demo"}


def test_unknown_subcommand_exits_2_and_names_it(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["frobnicate"]) == 2
    assert "frobnicate" in capsys.readouterr().err


def test_help_lists_the_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in SUBCOMMANDS:
        assert name in out


def test_console_script_is_installed_and_prints_the_version() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kubemaas", "--version"], capture_output=True, text=True, check=True
    )
    from kubemaas import __version__

    assert result.stdout.strip() == __version__
