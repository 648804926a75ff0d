"""The command group, its explicit list of commands, and the one exit-code policy."""

from __future__ import annotations

import logging
import signal
import sys
import warnings

import click

from .._version import __version__
from ..errors import ExitCode, UserError, printable
from ..spec import SpatialDropoutError
from .bench_command import bench
from .convert_command import convert
from .graph_commands import inspect, rewrite, strip
from .process import command_process
from .runtime_commands import inline, mc

PROG = "spatialdrop-onnx"
EXIT_CODES = "\b\nExit codes (every command):\n" + "\n".join(
    f"  {code.value:<3} {code.meaning}" for code in ExitCode)


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, epilog=EXIT_CODES)
@click.version_option(__version__, "-V", "--version", prog_name=PROG)
def app() -> None:
    """Channel-wise dropout for ONNX: convert, rewrite, strip, inspect, inline, mc, bench."""


for _command in (convert, rewrite, strip, inspect, inline, mc, bench):
    app.add_command(_command)


#: click >= 8.2 raises this for a group called without a command.
_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


def _terminate(signum: int, frame: object) -> None:
    # SystemExit unwinds the stack, so every temporary file is removed on the way out.
    raise SystemExit(128 + signum)


def _error(message: str) -> None:
    click.echo(f"{PROG}: error: {message}", err=True)


#: Longest error line shown (model-supplied parts are already cut shorter).
_MESSAGE_LIMIT = 2000
#: Libraries that log their own warnings about malformed models (unescaped names).
_QUIET_LOGGERS = ("onnx_ir", "onnxscript")


def _quiet_libraries() -> None:
    """Keep library log records off the terminal: each command says what is wrong in its
    own one line. (A NullHandler stops Python's last-resort stderr handler; a logging
    configuration of the caller still receives the records.)"""
    for name in _QUIET_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(h, logging.NullHandler) for h in logger.handlers):
            logger.addHandler(logging.NullHandler())


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; expected failures become one line on stderr and a documented exit code."""
    previous = signal.signal(signal.SIGTERM, _terminate)
    _quiet_libraries()
    try:
        with warnings.catch_warnings(), command_process():
            warnings.simplefilter("ignore")  # library warnings are not the user's output
            app.main(args=argv, prog_name=PROG, standalone_mode=False)
    except click.exceptions.Abort:
        click.echo(f"{PROG}: aborted", err=True)
        return ExitCode.INTERRUPTED
    except click.exceptions.ClickException as err:
        if isinstance(err, _NO_ARGS_IS_HELP) and getattr(err, "ctx", None) is not None:
            click.echo(err.ctx.get_help())  # the bare command: its help, as click would
        else:
            _error(printable(err.format_message(), limit=400))
        return ExitCode.USAGE
    except UserError as err:
        # Messages escape what they quote from a model; escaping the whole line again
        # guarantees one line whatever a message forgot.
        _error(printable(str(err), limit=_MESSAGE_LIMIT))
        return err.exit_code
    except SpatialDropoutError as err:
        _error(printable(err))
        return ExitCode.INVALID
    except OSError as err:
        where = f": {printable(err.filename)}" if err.filename else ""
        _error(f"{printable(err.strerror or err)}{where}")
        return ExitCode.INVALID
    except MemoryError:
        _error("out of memory: the input or the requested work does not fit in this machine's "
               "memory")
        return ExitCode.ENVIRONMENT
    except KeyboardInterrupt:
        click.echo(f"{PROG}: interrupted", err=True)
        return ExitCode.INTERRUPTED
    finally:
        signal.signal(signal.SIGTERM, previous)
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
