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


_DEFAULT_SHAPES = tuple(",".join(str(d) for d in shape) for shape in benchmark.DEFAULT_SHAPES)


@click.command("bench")
@click.option("--shape", multiple=True, default=_DEFAULT_SHAPES, show_default=True,
              help="Data shape, comma-separated; repeat the option to measure several "
                   "(the default: 16 MB, in cache, and 64 MB, out of cache).")
@click.option("--dtype", default="float32", show_default=True,
              help=f"Data type(s), comma-separated, or 'all': {', '.join(benchmark.DTYPES)}.")
@click.option("--shared-axes", default="1", show_default=True,
              help="Axes sharing one decision, comma-separated; 'default' for the op's "
                   "default (2..rank-1), 'none' for no shared axis.")
@click.option("--ratio", type=float, default=0.5, show_default=True, help="Drop probability.")
@click.option("--repeat", type=click.IntRange(min=1), default=30, show_default=True,
              help=f"Rounds: every row is timed once per round (the Python-op row runs at "
                   f"most {benchmark.EXTENSIONS_MAX_REPEAT} times; --mc: {MC_REPEAT} unless "
                   f"given).")
@click.option("--warmup", type=click.IntRange(min=0), default=3, show_default=True,
              help="Untimed runs before each row.")
@click.option("--threads", type=click.IntRange(min=0), default=0, show_default=True,
              help="Intra-op threads of every session (0: onnxruntime's default).")
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
@click.option("--sequences", default="1,8,64,512", show_default=True,
              help="--mc: batch(es) of the seed model, comma-separated.")
@click.option("--images", default="1,128", show_default=True,
              help="--mc: batch(es) of the CNNs, comma-separated.")
@click.option("--runs", type=click.IntRange(min=1), default=1, show_default=True,
              help="--mc: run everything this many times and print the ranges over the runs.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable result.")
@click.option("-q", "--quiet", is_flag=True, help="No progress lines.")
def bench(shape: tuple[str, ...], dtype: str, shared_axes: str, ratio: float, repeat: int,
          warmup: int, threads: int, no_extensions: bool, mc: bool, samples: int,
          seed_model: str | None, sequences: str, images: str, runs: int, as_json: bool,
          quiet: bool) -> None:
    """Time SpatialDropout in onnxruntime: native kernel vs broadcast Mul (the
    memory-bandwidth floor), the kernel in place inside a graph, the portable
    function body, ORT's Dropout and an onnxruntime-extensions Python op, on a
    16 MB and a 64 MB tensor. Prints each row's median time and the median of
    its per-round ratios to the floor, and the goals met. With --mc: Monte-Carlo
    dropout in one call (batch folding, Loop) vs N calls and vs one call on N x the
    batch, with peak memory, what --strategy auto builds, and the goals met.
    """
    progress = None if as_json or quiet or not sys.stderr.isatty() else (
        lambda label: click.echo(f"measuring: {label}", err=True))
    if mc:
        explicit = click.get_current_context().get_parameter_source("repeat")
        mc_repeat = repeat if explicit == click.core.ParameterSource.COMMANDLINE else MC_REPEAT
        _bench_mc(samples, seed_model, _batches(sequences, "--sequences"),
                  _batches(images, "--images"), mc_repeat, runs, as_json, progress)
        return
    shapes = [_parse_ints(text, "--shape") for text in shape]
    dtypes = _parse_dtypes(dtype)
    axes_text = shared_axes.strip().lower()
    axes = (None if axes_text == "default" else
            [] if axes_text in ("none", "") else _parse_ints(shared_axes, "--shared-axes"))
    results = []
    for dims in shapes:
        for name in dtypes:
            try:
                result = benchmark.run_bench(dims, name, axes, repeat=repeat, warmup=warmup,
                                             ratio=ratio, include_extensions=not no_extensions,
                                             threads=threads, progress=progress)
            except ValueError as err:  # bad shape, axes or ratio
                raise UsageError(str(err)) from None
            results.append(result)
            if not as_json:
                click.echo(benchmark.format_table(result))
    if as_json:
        emit_json({"results": [result.to_dict() for result in results]})


def _parse_dtypes(text: str) -> list[str]:
    names = list(benchmark.DTYPES) if text.strip().lower() == "all" else [
        part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in benchmark.DTYPES]
    if unknown or not names:
        raise click.BadParameter(f"--dtype must name {', '.join(benchmark.DTYPES)} or 'all', "
                                 f"got {text!r}")
    return names


def _batches(text: str, option: str) -> tuple[int, ...]:
    values = _parse_ints(text, option)
    if not values or min(values) < 1:
        raise click.BadParameter(f"{option} must be positive integers, got {text!r}")
    return tuple(values)


def _bench_mc(samples: int, seed_model: str | None, sequences: tuple[int, ...],
              images: tuple[int, ...], repeat: int, runs: int, as_json: bool,
              progress: Callable[[str], None] | None) -> None:
    from .. import bench_mc
    from ..modelio import load_model

    extra = []
    if seed_model is not None:
        model = load_model(seed_model).model
        extra = [("seed", f"seed model, {batch} token sequences", model,
                  bench_mc.token_feeds(model, batch)) for batch in sequences]
    result = bench_mc.run_mc_bench(samples=samples, repeat=repeat, cnn_batches=images,
                                   extra=extra, runs=runs, progress=progress)
    if as_json:
        emit_json(result.to_dict())
    else:
        click.echo(bench_mc.format_table(result))
