"""``spatialdrop-onnx rewrite | strip | inspect``: the graph passes on ONNX files.

Every command loads its input with :func:`spatialdrop_onnx.modelio.load_model`
(external data validated on the parsed model) and writes with
:func:`~spatialdrop_onnx.modelio.save_model` (model and data as one unit,
atomically). Sites left unconverted are written out, named, and exit with code 5.
"""

from __future__ import annotations

import click

from ..errors import PartialResult, printable
from ..options import ElementwiseOp, values
from .output import emit_json, model_errors, site_line, summarise_sites

_OUTPUT = click.option("-o", "--output", required=True, metavar="OUT.onnx",
                       help="Where to write (model and data written as one unit, atomically).")
_IN_PLACE = click.option("--in-place", is_flag=True,
                         help="Allow OUT.onnx to be the input file itself (replaced atomically).")
_JSON = click.option("--json", "as_json", is_flag=True, help="Print a JSON report on stdout.")
_QUIET = click.option("-q", "--quiet", is_flag=True, help="No summary line.")


@click.command("rewrite")
@click.argument("src", metavar="IN.onnx")
@_OUTPUT
@click.option("--training-default", type=click.BOOL, default=False, show_default=True,
              help="Initializer default of the training_mode input. false: the model "
                   "computes its inference output unless training_mode is fed true.")
@click.option("--elementwise", type=click.Choice(values(ElementwiseOp)),
              default=ElementwiseOp.DROPOUT.value,
              show_default=True,
              help="Write element-wise sites as ONNX Dropout, or as SpatialDropout with no "
                   "shared axis (onnxruntime optimises interior Dropout nodes away even in "
                   "training mode).")
@_IN_PLACE
@_JSON
@_QUIET
def rewrite(src: str, output: str, training_default: bool, elementwise: str, in_place: bool,
            as_json: bool, quiet: bool) -> None:
    """Turn exporter dropout into SpatialDropout / Dropout with one training_mode switch."""
    from ..passes import rewrite_file

    with model_errors(src, "rewrite"):
        report = rewrite_file(src, output, training_default=training_default,
                              elementwise=elementwise, in_place=in_place)
    if as_json:
        emit_json(report.to_dict())
    elif not quiet:
        dropout = sum(1 for s in report.converted if s.becomes == "Dropout")
        opset = (f" (opset converted from {report.opset_converted_from})"
                 if report.opset_converted_from else "")
        click.echo(f"{printable(output)}: {len(report.converted) - dropout} SpatialDropout, "
                   f"{dropout} Dropout from random subgraphs, {len(report.rewired)} dropout "
                   f"node(s) rewired to training_mode{opset}", err=True)
    if report.unconvertible:
        raise PartialResult(f"wrote {printable(output)}, but {len(report.unconvertible)} random "
                            f"site(s) were left unconverted: "
                            f"{summarise_sites(report.unconvertible)}")


@click.command("strip")
@click.argument("src", metavar="IN.onnx")
@_OUTPUT
@_IN_PLACE
@_JSON
@_QUIET
def strip(src: str, output: str, in_place: bool, as_json: bool, quiet: bool) -> None:
    """Fold every dropout to the identity for inference."""
    from ..passes import strip_file

    with model_errors(src, "strip"):
        report = strip_file(src, output, in_place=in_place)
    if as_json:
        emit_json(report.to_dict())
    elif not quiet:
        click.echo(f"{printable(output)}: folded {report.folded} dropout site(s)", err=True)
    if report.unconvertible:
        raise PartialResult(f"wrote {printable(output)}, but {len(report.unconvertible)} random "
                            f"site(s) were left in place: "
                            f"{summarise_sites(report.unconvertible)}")


@click.command("inspect")
@click.argument("src", metavar="IN.onnx")
@_JSON
@_QUIET
def inspect(src: str, as_json: bool, quiet: bool) -> None:
    """List every dropout site: kind, ratio, shared axes and where it sits."""
    from ..passes import inspect_file

    with model_errors(src, "inspect"):
        sites = inspect_file(src)
    if as_json:
        emit_json([site.to_dict() for site in sites])
    elif not quiet:
        if not sites:
            click.echo("no dropout sites")
        for site in sites:
            click.echo(site_line(site))
