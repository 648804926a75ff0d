"""``spatialdrop-onnx bench``: the native kernel against its anchors, in one run."""

from __future__ import annotations

import sys

import click

from .. import bench as benchmark
from ..errors import UsageError
from .output import emit_json


def _parse_ints(text: str, what: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise click.BadParameter(f"{what} must be comma-separated integers, got {text!r}") from None


@click.command("bench")
@click.option("--shape", default="32,256,512", show_default=True,
              help="Data shape, comma-separated.")
@click.option("--dtype", type=click.Choice(list(benchmark.DTYPES)), default="float32",
              show_default=True)
@click.option("--shared-axes", default="1", show_default=True,
              help="Axes sharing one decision, comma-separated; 'default' for the op's "
                   "default (2..rank-1), 'none' for no shared axis.")
@click.option("--ratio", type=float, default=0.5, show_default=True, help="Drop probability.")
@click.option("--repeat", type=click.IntRange(min=1), default=30, show_default=True,
              help=f"Timed runs per row (the Python-op row runs at most "
                   f"{benchmark.EXTENSIONS_MAX_REPEAT}).")
@click.option("--warmup", type=click.IntRange(min=0), default=3, show_default=True,
              help="Untimed runs before each row.")
@click.option("--no-extensions", is_flag=True, help="Skip the slow onnxruntime-extensions row.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable result.")
@click.option("-q", "--quiet", is_flag=True, help="No progress lines.")
def bench(shape: str, dtype: str, shared_axes: str, ratio: float, repeat: int,
          warmup: int, no_extensions: bool, as_json: bool, quiet: bool) -> None:
    """Time SpatialDropout in onnxruntime: native kernel vs broadcast Mul (the
    memory-bandwidth floor), the portable function body, ORT's Dropout and an
    onnxruntime-extensions Python op. Prints the median time of each and its
    ratio to the floor.
    """
    dims = _parse_ints(shape, "--shape")
    axes_text = shared_axes.strip().lower()
    axes = (None if axes_text == "default" else
            [] if axes_text in ("none", "") else _parse_ints(shared_axes, "--shared-axes"))
    progress = None if as_json or quiet or not sys.stderr.isatty() else (
        lambda label: click.echo(f"measuring: {label}", err=True))
    try:
        result = benchmark.run_bench(dims, dtype, axes, repeat=repeat, warmup=warmup, ratio=ratio,
                                 include_extensions=not no_extensions, progress=progress)
    except ValueError as err:  # bad shape, axes or ratio
        raise UsageError(str(err)) from None
    if as_json:
        emit_json(result.to_dict())
    else:
        click.echo(benchmark.format_table(result))
