"""``spatialdrop-onnx bench``: the native kernel against its anchors, in one run."""

from __future__ import annotations

import sys
from collections.abc import Callable

import click

from .. import bench as benchmark
from ..errors import UsageError
from .output import emit_json


def _parse_ints(text: str, what: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise click.BadParameter(f"{what} must be comma-separated integers, got {text!r}") from None


#: Timed units per row of --mc unless --repeat is given (a unit is N samples).
MC_REPEAT = 7


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
                   f"{benchmark.EXTENSIONS_MAX_REPEAT}; --mc: {MC_REPEAT} unless given).")
@click.option("--warmup", type=click.IntRange(min=0), default=3, show_default=True,
              help="Untimed runs before each row.")
@click.option("--no-extensions", is_flag=True, help="Skip the slow onnxruntime-extensions row.")
@click.option("--mc", is_flag=True,
              help="Instead: Monte-Carlo dropout, the MC model (batch folding and Loop) in one "
                   "call vs N session.run calls, with peak memory (small CNNs; the seed model "
                   "with --seed-model).")
@click.option("--samples", type=click.IntRange(min=2), default=32, show_default=True,
              help="--mc: samples N.")
@click.option("--seed-model", type=click.Path(exists=True, dir_okay=False), default=None,
              help="--mc: the converted seed model (spatialdrop-onnx convert "
                   "models/seed_model.keras), run over --sequences token sequences.")
@click.option("--sequences", type=click.IntRange(min=1), default=512, show_default=True,
              help="--mc: batch of the seed model.")
@click.option("--images", type=click.IntRange(min=1), default=128, show_default=True,
              help="--mc: batch of the CNNs.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable result.")
@click.option("-q", "--quiet", is_flag=True, help="No progress lines.")
def bench(shape: str, dtype: str, shared_axes: str, ratio: float, repeat: int,
          warmup: int, no_extensions: bool, mc: bool, samples: int, seed_model: str | None,
          sequences: int, images: int, as_json: bool, quiet: bool) -> None:
    """Time SpatialDropout in onnxruntime: native kernel vs broadcast Mul (the
    memory-bandwidth floor), the portable function body, ORT's Dropout and an
    onnxruntime-extensions Python op. Prints the median time of each and its
    ratio to the floor. With --mc: Monte-Carlo dropout in one call vs N calls.
    """
    progress = None if as_json or quiet or not sys.stderr.isatty() else (
        lambda label: click.echo(f"measuring: {label}", err=True))
    if mc:
        explicit = click.get_current_context().get_parameter_source("repeat")
        mc_repeat = repeat if explicit == click.core.ParameterSource.COMMANDLINE else MC_REPEAT
        _bench_mc(samples, seed_model, sequences, images, mc_repeat, as_json, progress)
        return
    dims = _parse_ints(shape, "--shape")
    axes_text = shared_axes.strip().lower()
    axes = (None if axes_text == "default" else
            [] if axes_text in ("none", "") else _parse_ints(shared_axes, "--shared-axes"))
    try:
        result = benchmark.run_bench(dims, dtype, axes, repeat=repeat, warmup=warmup, ratio=ratio,
                                 include_extensions=not no_extensions, progress=progress)
    except ValueError as err:  # bad shape, axes or ratio
        raise UsageError(str(err)) from None
    if as_json:
        emit_json(result.to_dict())
    else:
        click.echo(benchmark.format_table(result))


def _bench_mc(samples: int, seed_model: str | None, sequences: int, images: int, repeat: int,
              as_json: bool, progress: Callable[[str], None] | None) -> None:
    from .. import bench_mc
    from ..modelio import load_model

    extra = []
    if seed_model is not None:
        model = load_model(seed_model).model
        extra.append(("seed", f"seed model, {sequences} token sequences", model,
                      bench_mc.token_feeds(model, sequences)))
    result = bench_mc.run_mc_bench(samples=samples, repeat=repeat, cnn_batch=images,
                                   extra=extra, progress=progress)
    if as_json:
        emit_json(result.to_dict())
    else:
        click.echo(bench_mc.format_table(result))
