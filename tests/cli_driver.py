"""Run several CLI invocations in one child process; print their results as JSON.

``python cli_driver.py '[["inspect", "m.onnx"], ...]'`` calls
``spatialdrop_onnx.cli.main`` for each argument list, capturing what it prints,
and writes ``[{"code": ..., "out": ..., "err": ...}, ...]`` to stdout. A crash
(a signal) kills the whole child, which the caller sees in its return code;
one process for many invocations pays the imports once.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys

from spatialdrop_onnx.cli import main


def run_all(invocations: list[list[str]]) -> list[dict]:
    results = []
    for argv in invocations:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except BaseException as exc:  # noqa: BLE001 - reported, never swallowed silently
                code = f"raised {type(exc).__name__}: {exc}"
        results.append({"argv": argv, "code": code, "out": out.getvalue(),
                        "err": err.getvalue()})
    return results


if __name__ == "__main__":
    real_stdout = sys.stdout
    results = run_all(json.loads(sys.argv[1]))
    real_stdout.write(json.dumps(results))
