"""The ``spatialdrop-onnx`` command line.

Each sub-command lives in its own module and registers itself on ``app``;
``main`` turns expected failures into one line on stderr and exit code 2.
"""

from __future__ import annotations

import sys

import click

from .. import spec
from ..errors import UserError

PROG = "spatialdrop-onnx"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="spatialdrop-onnx", prog_name=PROG)
def app() -> None:
    """Channel-wise dropout for ONNX: convert, rewrite, strip, inspect, bench."""


def _register_commands() -> None:
    # Imported for their side effect of adding commands to ``app``.
    from . import commands  # noqa: F401


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI; expected errors become one line and exit code 2."""
    _register_commands()
    try:
        app.main(args=argv, prog_name=PROG, standalone_mode=False)
    except click.exceptions.Abort:
        click.echo(f"{PROG}: aborted", err=True)
        return 130
    except click.exceptions.ClickException as err:
        click.echo(f"{PROG}: error: {err.format_message()}", err=True)
        return 2
    except (UserError, spec.SpatialDropoutError, OSError) as err:
        click.echo(f"{PROG}: error: {err}", err=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
