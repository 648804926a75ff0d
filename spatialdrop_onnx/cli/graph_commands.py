"""``spatialdrop-onnx rewrite | strip | inspect``: the graph passes on ONNX files.

Every command loads its input with :func:`spatialdrop_onnx.modelio.load_model`
(external data validated, never read) and writes atomically; bad input is a
one-line error with exit code 2. Sites left unconverted are written out and
then reported as an error, so scripts notice.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator

import click

from ..errors import UserError
from ..spec import SpatialDropoutError
from . import app


@contextlib.contextmanager
def _one_line_errors(src: str, action: str) -> Iterator[None]:
    """A model that loads but is malformed inside (dangling names, odd attributes) must
    still end in one line, not a traceback; ``SPATIALDROP_ONNX_TRACEBACK=1`` shows it."""
    try:
        yield
    except (UserError, SpatialDropoutError, OSError, click.ClickException):
        raise
    except Exception as err:  # noqa: BLE001 - the safety net for malformed models
        if os.environ.get("SPATIALDROP_ONNX_TRACEBACK"):
            raise
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise UserError(f"{src}: cannot {action} this model ({type(err).__name__}: {first}; "
                        "set SPATIALDROP_ONNX_TRACEBACK=1 for details)") from None


def _summarise_unconvertible(entries: list[dict]) -> str:
    parts = [f"{e['name']} ({e['graph']}): {e['reason']}" for e in entries[:5]]
    more = f"; and {len(entries) - 5} more" if len(entries) > 5 else ""
    return "; ".join(parts) + more


@app.command("rewrite")
@click.argument("src", metavar="IN.onnx")
@click.option("-o", "--output", required=True, metavar="OUT.onnx", help="Where to write.")
@click.option("--training-default", type=click.BOOL, default=True, show_default=True,
              help="Initializer default of the training_mode input (true keeps what the "
                   "exported model did).")
@click.option("--elementwise", type=click.Choice(["dropout", "spatial"]), default="dropout",
              show_default=True,
              help="Write element-wise sites as ONNX Dropout, or as SpatialDropout with no "
                   "shared axis (onnxruntime optimises interior Dropout nodes away even in "
                   "training mode).")
def rewrite_command(src: str, output: str, training_default: bool, elementwise: str) -> None:
    """Turn exporter dropout into SpatialDropout / Dropout with one training_mode switch."""
    from ..passes.rewrite import rewrite_path

    with _one_line_errors(src, "rewrite"):
        report = rewrite_path(src, output, training_default=training_default,
                              elementwise=elementwise)
    dropout = sum(1 for s in report.sites if s["becomes"] == "Dropout")
    click.echo(
        f"{output}: {len(report.sites) - dropout} SpatialDropout, {dropout} Dropout from random "
        f"subgraphs, {report.rewired_dropouts} Dropout rewired to training_mode"
        + (f" (opset converted from {report.opset_converted_from})"
           if report.opset_converted_from else ""),
        err=True)
    if report.unconvertible:
        raise UserError(f"wrote {output}, but {len(report.unconvertible)} random site(s) were "
                        f"left unconverted: {_summarise_unconvertible(report.unconvertible)}")


@app.command("strip")
@click.argument("src", metavar="IN.onnx")
@click.option("-o", "--output", required=True, metavar="OUT.onnx", help="Where to write.")
@click.option("-q", "--quiet", is_flag=True, help="No summary line.")
def strip_command(src: str, output: str, quiet: bool) -> None:
    """Fold every dropout to the identity for inference."""
    from ..passes.strip import strip_path

    with _one_line_errors(src, "strip"):
        report = strip_path(src, output)
    if not quiet:
        click.echo(f"{output}: folded {report.folded} dropout site(s)", err=True)
    if report.unconvertible:
        raise UserError(f"wrote {output}, but {len(report.unconvertible)} random site(s) were "
                        f"left in place: {_summarise_unconvertible(report.unconvertible)}")


@app.command("inspect")
@click.argument("src", metavar="IN.onnx")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list, one object per site.")
def inspect_command(src: str, as_json: bool) -> None:
    """List every dropout site: kind, ratio, shared axes and where it sits."""
    from ..passes.inspect import inspect_path

    with _one_line_errors(src, "inspect"):
        sites = inspect_path(src)
    if as_json:
        json.dump(sites, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    if not sites:
        click.echo("no dropout sites")
        return
    for site in sites:
        ratio = "?" if site["ratio"] is None else f"{site['ratio']:.6g}"
        axes = "?" if site["shared_axes"] is None else site["shared_axes"]
        extra = site.get("reason") or site.get("rule") or site.get("training_mode") or ""
        click.echo(f"{site['kind']:<16} ratio={ratio:<8} shared_axes={axes!s:<12} "
                   f"{site['graph']}  {site['name']}  {extra}")
