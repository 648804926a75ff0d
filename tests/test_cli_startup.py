"""Ctrl-C during the command line's start-up is one line and exit 130; importing the
package is cheap and its names are what they say."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from op_models import dropout_model

#: Run in a child: a meta-path finder sends the process a real SIGINT when the named
#: module is first imported (Ctrl-C landing during that import), then the console
#: script's own entry point runs.
_INTERRUPTED_AT = """
import os, signal, sys
class Interrupt:
    def find_spec(self, name, path=None, target=None):
        if name == {module!r}:
            os.kill(os.getpid(), signal.SIGINT)
        return None
sys.meta_path.insert(0, Interrupt())
from spatialdrop_onnx.cli import main
sys.exit(main(["inspect", {model!r}]))
"""


@pytest.mark.parametrize("module", ["spatialdrop_onnx.cli.group", "click", "numpy",
                                    "ml_dtypes", "onnx"])
def test_interrupt_during_start_up_is_one_line(tmp_path: Path, module: str) -> None:
    model = tmp_path / "m.onnx"
    onnx.save(dropout_model((2, 3, 4), seed=1), model)
    done = subprocess.run([sys.executable, "-c", _INTERRUPTED_AT.format(module=module,
                                                                        model=str(model))],
                          capture_output=True, text=True, timeout=120)
    assert done.stderr == "spatialdrop-onnx: interrupted\n", done.stderr
    assert done.returncode == 130
    assert done.stdout == ""


def test_importing_the_package_loads_no_runtime() -> None:
    """The package's names are imported on first use: `import spatialdrop_onnx` loads
    neither onnx nor onnxruntime, every public name resolves, and `spatialdrop_onnx.inline`
    is the function even after its module was imported."""
    code = ("import sys, spatialdrop_onnx as sd\n"
            "assert 'onnxruntime' not in sys.modules and 'onnx' not in sys.modules, 'eager'\n"
            "import spatialdrop_onnx.inlining\n"
            "assert callable(sd.inline) and sd.inline.__name__ == 'inline'\n"
            "missing = [n for n in sd.__all__ if getattr(sd, n, None) is None]\n"
            "assert not missing, missing\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
