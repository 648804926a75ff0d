"""``spatialdrop-onnx convert``: a Keras 3 model to ONNX with its dropout kept switchable."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import click

from ..converters import keras_convert
from ..converters.keras_stack import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET
from ..converters.native_output import captured_native_stderr
from ..errors import prefixed_with, printable
from .output import emit_json

#: Longest summary line shown (a line quotes layer names and paths).
_LINE_LIMIT = 2000


class TerminalProgress:
    """Writes ``label ... 1.2 s`` lines to stderr for each slow step."""

    def __init__(self, stream=None) -> None:  # noqa: ANN001 - a text stream
        self.stream = stream or sys.stderr

    @contextlib.contextmanager
    def __call__(self, label: str) -> Iterator[None]:
        click.echo(f"{label} ...", file=self.stream, nl=False)
        self.stream.flush()
        start = time.perf_counter()
        try:
            yield
        except BaseException:
            click.echo(" failed", file=self.stream)
            raise
        click.echo(f" {time.perf_counter() - start:.1f} s", file=self.stream)


@click.command("convert")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help="Where to write the ONNX model (written atomically).")
@click.option("--opset", type=int, default=DEFAULT_OPSET, show_default=True,
              help=f"Default-domain ONNX opset ({MIN_OPSET}..{MAX_OPSET}).")
@click.option("--strip", is_flag=True,
              help="Write the inference model: every dropout removed, no training_mode input.")
@click.option("--training-default", type=click.BOOL, default=False, show_default=True,
              help="Initializer default of the training_mode input. false: the model "
                   "computes its inference output unless training_mode is fed true.")
@click.option("--trust-model", is_flag=True,
              help="Allow .h5/.hdf5 files and SavedModel directories (they can run code "
                   "when loaded). .keras files always load with safe_mode=True.")
@click.option("--import", "imports", multiple=True, metavar="MODULE",
              help="Import MODULE first so the custom Keras layers it registers load "
                   "(repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable report.")
@click.option("-q", "--quiet", is_flag=True, help="No progress and no summary.")
@click.option("-v", "--verbose", is_flag=True,
              help="Let TensorFlow, absl and oneDNN print their own log lines.")
def convert(model: Path, output: Path, opset: int, strip: bool, training_default: bool,
            trust_model: bool, imports: tuple[str, ...], as_json: bool, quiet: bool,
            verbose: bool) -> None:
    """Convert a Keras 3 MODEL (.keras) to ONNX, keeping its dropout layers.

    Dropout layers (SpatialDropout1D/2D/3D, Dropout, GaussianDropout,
    GaussianNoise, AlphaDropout, RNN dropout), also those nested inside other
    layers, and other layers seen drawing random numbers in training mode
    (e.g. stochastic depth) become SpatialDropout or ONNX Dropout switched by a
    boolean `training_mode` input that defaults to false; every other layer is
    exported in inference mode. A random layer that cannot be kept is named and
    the exit status is 5. Needs TensorFlow and tf2onnx:
    pip install "spatialdrop-onnx[keras]".
    """
    show_progress = sys.stderr.isatty() and not quiet
    # TensorFlow's C++ side prints to fd 2 at import and first use; keep it off the terminal.
    with captured_native_stderr(enabled=not verbose) as captured:
        progress = (TerminalProgress(captured.terminal) if show_progress
                    else keras_convert.no_progress)
        # Every error names the user's file (or already names the output).
        with prefixed_with(model, also=(output,)):
            report = keras_convert.convert_keras(model, output, opset=opset, strip=strip,
                                                 trust_model=trust_model, imports=imports,
                                                 progress=progress,
                                                 training_default=training_default)
    if as_json:
        emit_json(report.to_dict())
    elif not quiet:
        for line in report.summary_lines():  # layer names come from the model: escaped
            click.echo(printable(line, limit=_LINE_LIMIT))
    if quiet or as_json:
        # A layer exported for inference only is never left unsaid.
        for warning in report.warnings:
            click.echo(f"warning: {printable(warning, limit=_LINE_LIMIT)}", err=True)
    partial = report.partial_error()
    if partial is not None:
        raise partial  # exit 5: written, but some randomness is not kept
