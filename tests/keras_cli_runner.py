"""Run the ``spatialdrop-onnx`` CLI in-process (TensorFlow is imported once per test session)."""

from __future__ import annotations

import contextlib
import io
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from spatialdrop_onnx.cli import main


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    @property
    def report(self) -> dict[str, Any]:
        return json.loads(self.stdout)


def run_cli(*args: str) -> CliResult:
    """``spatialdrop-onnx ARGS`` in this process, capturing both streams."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return CliResult(code, out.getvalue(), err.getvalue())


def assert_one_line_error(result: CliResult, code: int, *fragments: str) -> None:
    """Exit ``code``, one line on stderr naming each fragment, no traceback, nothing on stdout."""
    assert result.code == code, (result.code, result.stdout, result.stderr)
    message = result.stderr.strip()
    assert message.startswith("spatialdrop-onnx: error:"), message
    assert "\n" not in message and "Traceback" not in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    assert result.stdout == ""


def session(model: onnx.ModelProto | str, native: bool = False,
            keep_dropout: bool = False) -> ort.InferenceSession:
    """onnxruntime session through the function body, or with the native kernel registered.

    ``keep_dropout`` (to sample with ``training_mode`` true) makes it
    ``sd.inference_session``: onnxruntime's EliminateDropout would delete ONNX ``Dropout``
    and its CPU masks are not independent from run to run (docs/passes.md).
    """
    import spatialdrop_onnx as sd

    if keep_dropout:
        return sd.inference_session(model, native=native)
    data = model if isinstance(model, str) else model.SerializeToString()
    options = sd.session_options() if native else ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def run(sess: ort.InferenceSession, feeds: dict[str, np.ndarray],
        training: bool | None) -> dict[str, np.ndarray]:
    """Outputs by name; ``training`` None leaves ``training_mode`` at its default."""
    feeds = dict(feeds)
    if training is not None:
        feeds["training_mode"] = np.array(training)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds), strict=True))
