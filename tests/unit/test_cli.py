"""The ``fnsession`` command line: version and help."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

import fnsession
from fnsession.cli import main


def test_version_flag_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"fnsession {fnsession.__version__}"


def test_version_command_verbose_names_the_api(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["version", "--verbose"]) == 0
    out = capsys.readouterr().out
    assert f"fnsession {fnsession.__version__}" in out
    assert "api: fnsession.dev/v1alpha1" in out


def test_no_arguments_prints_help_and_succeeds(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: fnsession")
    assert "version" in out and "examples:" in out


def test_unknown_command_is_refused_with_usage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["no-such-command"])
    assert exit_.value.code == 2
    assert "invalid choice: 'no-such-command'" in capsys.readouterr().err


def test_console_script_is_installed() -> None:
    exe = shutil.which("fnsession", path=str(__import__("pathlib").Path(sys.executable).parent))
    assert exe, "the fnsession console script is not installed next to this interpreter"
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, check=True).stdout
    assert "usage: fnsession" in out
    out = subprocess.run([sys.executable, "-m", "fnsession", "--version"], capture_output=True, text=True, check=True).stdout
    assert out.strip() == f"fnsession {fnsession.__version__}"
