"""``spatialdrop-onnx inline``: models for runtimes without our op or model-local functions.

Both load with :func:`spatialdrop_onnx.modelio.load_model` and write with
:func:`~spatialdrop_onnx.modelio.save_model` (model and data as one unit,
atomically), like the graph passes.
"""

from __future__ import annotations

import click

from ..errors import printable
from .graph_commands import _IN_PLACE, _JSON, _OUTPUT, _QUIET
from .output import emit_json, model_errors


@click.command("inline")
@click.argument("src", metavar="IN.onnx")
@_OUTPUT
@click.option("--all-functions", is_flag=True,
              help="Inline the model's own local functions too (OpenVINO runs none).")
@_IN_PLACE
@_JSON
@_QUIET
def inline(src: str, output: str, all_functions: bool, in_place: bool, as_json: bool,
           quiet: bool) -> None:
    """Replace every SpatialDropout by standard ONNX ops (no custom domain, no function of
    ours), keeping channel-wise dropout and the training_mode switch: for runtimes such as
    OpenVINO. ONNX Dropout nodes that can train are lowered the same way."""
    from ..inline import inline_file

    with model_errors(src, "inline"):
        report = inline_file(src, output, all_functions=all_functions, in_place=in_place)
    if as_json:
        emit_json(report.to_dict())
    elif not quiet:
        lowered = (f" ({report.dropout_lowered} of them ONNX Dropout)"
                   if report.dropout_lowered else "")
        functions = (f"; {report.functions_inlined} local function(s) inlined"
                     if report.functions_inlined else "")
        click.echo(f"{printable(output)}: inlined {report.inlined} dropout node(s){lowered}"
                   f"{functions}", err=True)
