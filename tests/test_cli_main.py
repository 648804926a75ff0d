"""The CLI frame: help, version, and one-line errors with exit code 2."""

import subprocess
import sys


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "spatialdrop_onnx", *args],
                          capture_output=True, text=True, timeout=120)


def test_help_lists_commands():
    result = _cli("--help")
    assert result.returncode == 0
    assert "Usage:" in result.stdout


def test_version():
    import importlib.metadata

    import spatialdrop_onnx

    for flag in ("--version", "-V"):
        result = _cli(flag)
        assert result.returncode == 0
        assert result.stdout.strip() == f"spatialdrop-onnx, version {spatialdrop_onnx.__version__}"
    # One source of truth: the installed metadata reads the package's own version.
    assert importlib.metadata.version("spatialdrop-onnx") == spatialdrop_onnx.__version__


def test_unknown_command_is_one_line_error():
    result = _cli("no-such-command")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert result.stderr.startswith("spatialdrop-onnx: error:")
    assert "Traceback" not in result.stderr
