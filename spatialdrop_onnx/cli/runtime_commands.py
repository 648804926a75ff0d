"""``spatialdrop-onnx inline | mc``: models for other runtimes; Monte-Carlo dropout as one model.

Both load with :func:`spatialdrop_onnx.modelio.load_model` and write with
:func:`~spatialdrop_onnx.modelio.save_model` (model and data as one unit,
atomically), like the graph passes.
"""

from __future__ import annotations

import click

from ..errors import PartialResult, printable
from ..options import MAX_SAMPLES, Strategy, values
from .graph_commands import _IN_PLACE, _JSON, _OUTPUT, _QUIET
from .output import emit_json, model_errors


@click.command("inline")
@click.argument("src", metavar="IN.onnx")
@_OUTPUT
@click.option("--all-functions", is_flag=True,
              help="Inline the model's own local functions too (OpenVINO runs none).")
@click.option("--unroll-loops", is_flag=True,
              help="Also write out every main-graph Loop that runs a constant number of steps "
                   "(a Keras RNN's, at a declared sequence length), for runtimes that run no "
                   "Loop (tract); a Loop left is named, with why (exit 5).")
@_IN_PLACE
@_JSON
@_QUIET
def inline(src: str, output: str, all_functions: bool, unroll_loops: bool, in_place: bool,
           as_json: bool, quiet: bool) -> None:
    """Replace every SpatialDropout by standard ONNX ops (no custom domain, no function of
    ours), keeping channel-wise dropout and the training_mode switch: for runtimes such as
    OpenVINO. ONNX Dropout nodes that can train are lowered the same way."""
    from ..inlining import inline_file

    with model_errors(src, "inline"):
        report = inline_file(src, output, all_functions=all_functions,
                             unroll_loops=unroll_loops, in_place=in_place)
    if as_json:
        emit_json(report.to_dict())
    elif not quiet:
        lowered = (f" ({report.dropout_lowered} of them ONNX Dropout)"
                   if report.dropout_lowered else "")
        functions = (f"; {report.functions_inlined} local function(s) inlined"
                     if report.functions_inlined else "")
        switch = ("" if report.switch_default is None else
                  f"; training_mode is now a required input (its default was "
                  f"{str(report.switch_default).lower()})")
        unrolled = (f"; {len(report.loops_unrolled)} Loop(s) written out in "
                    f"{report.unrolled_steps} steps" if report.loops_unrolled else "")
        click.echo(f"{printable(output)}: inlined {report.inlined} dropout node(s){lowered}"
                   f"{functions}{switch}{unrolled}", err=True)
    if unroll_loops and report.loops_left:
        raise PartialResult(f"wrote {printable(output)}, but {len(report.loops_left)} Loop(s) "
                            f"were left: {printable('; '.join(report.loops_left), limit=400)}")


@click.command("mc")
@click.argument("src", metavar="IN.onnx")
@_OUTPUT
@click.option("--samples", "-n", type=click.IntRange(min=2, max=MAX_SAMPLES), required=True,
              help="Stochastic passes the statistics are taken over.")
@click.option("--strategy", type=click.Choice(values(Strategy)), default=Strategy.AUTO.value,
              show_default=True,
              help="batch: fold the samples into the batch (one run; only for models whose "
                   "rows are independent, checked); loop: a Loop with running statistics "
                   "(constant memory, any model); auto: where folding is valid, a Loop that "
                   "folds as many samples per iteration as fit a 2 MB cache at the batch it "
                   "is given, else a Loop of one sample per iteration (the summary says why).")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, metavar="B",
              help="The batch size the model will be served at (auto only): where all N x B "
                   "rows fit the cache, auto folds without a Loop, saving its fixed cost "
                   "(~10 us a call). The model still takes any batch.")
@click.option("--keep-samples", is_flag=True,
              help="Also output every sample, as Y_samples stacked on a new axis 0.")
@click.option("--classification", is_flag=True,
              help="For every output that is a probability vector (float, last axis declared "
                   "with size >= 2) also output Y_entropy (of the mean), Y_expected_entropy "
                   "(mean of the samples') and Y_mutual_information (their difference), over "
                   "the last axis, natural log.")
@click.option("--classification-output", "classification_outputs", metavar="NAME",
              multiple=True,
              help="Only this output gets the classification statistics (repeatable; implies "
                   "--classification; its last axis may have a symbolic size).")
@click.option("--logits", is_flag=True,
              help="The classification outputs are logits: softmax over the last axis before "
                   "the entropies.")
@_IN_PLACE
@_JSON
@_QUIET
def mc(src: str, output: str, samples: int, strategy: str, batch_size: int | None,
       keep_samples: bool, classification: bool, classification_outputs: tuple[str, ...],
       logits: bool, in_place: bool, as_json: bool, quiet: bool) -> None:
    """Monte-Carlo dropout as one model: for each float output Y, Y_mean and Y_std (population
    standard deviation) over N passes with dropout on, computed inside the graph. The inputs
    are the model's minus training_mode. With --classification, class-probability outputs
    also get their predictive entropy, expected entropy and mutual information."""
    from ..passes.monte_carlo import monte_carlo_file

    if logits and not (classification or classification_outputs):
        raise click.UsageError("--logits needs --classification or --classification-output")
    chosen: bool | tuple[str, ...] = classification_outputs or classification
    with model_errors(src, "build the Monte-Carlo model of"):
        report = monte_carlo_file(src, output, samples=samples, strategy=strategy,
                                  keep_samples=keep_samples, classification=chosen,
                                  logits=logits, batch_size=batch_size, in_place=in_place)
    if as_json:
        emit_json(report.to_dict())
    elif not quiet:
        names = ", ".join(printable(n) for o in report.outputs for n in o.names)
        dropped = ", ".join(printable(n) for n in report.dropped_outputs)
        left_out = f"; left out (not float): {dropped}" if dropped else ""
        click.echo(f"{printable(output)}: {report.samples} samples, strategy {report.strategy} "
                   f"({printable(report.reason, limit=300)}); outputs {names}{left_out}",
                   err=True)
