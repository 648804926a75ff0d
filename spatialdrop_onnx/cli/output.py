"""How every command talks: strict JSON, escaped names, one-line errors.

Names inside a model are attacker-controlled, so everything that comes from a
model goes through :func:`~spatialdrop_onnx.errors.printable` before it reaches
a terminal; JSON is strict (``allow_nan=False``).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterator
from typing import Any

import click

from ..errors import UserError, caused_by_memory, printable
from ..sites import Site
from ..spec import SpatialDropoutError

#: Set to see the traceback of an unexpected failure instead of its one-line summary.
TRACEBACK_ENV = "SPATIALDROP_ONNX_TRACEBACK"


def strict_json_value(data: Any) -> Any:  # noqa: ANN401 - any JSON-able value
    """``data`` with every NaN or infinite float replaced by None (strict JSON has neither)."""
    if isinstance(data, float):  # numpy float64 is a float too
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {key: strict_json_value(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [strict_json_value(value) for value in data]
    if hasattr(data, "dtype") and hasattr(data, "item"):  # numpy scalars
        return strict_json_value(data.item())
    return data


def emit_json(data: Any) -> None:  # noqa: ANN401 - any JSON-able value
    """Print ``data`` as strict JSON on stdout (no NaN, no Infinity: those become null)."""
    click.echo(json.dumps(strict_json_value(data), indent=2, allow_nan=False))


def site_line(site: Site) -> str:
    """One terminal line for a site (model-supplied names escaped)."""
    ratio = "?" if site.ratio is None else f"{site.ratio:.6g}"
    axes = "?" if site.shared_axes is None else list(site.shared_axes)
    extra = site.reason or site.rule or site.training_mode or ""
    return (f"{site.kind.value:<16} ratio={ratio:<8} shared_axes={axes!s:<12} "
            f"{printable(site.graph)}  {printable(site.name)}  {printable(extra)}")


def summarise_sites(sites: tuple[Site, ...] | list[Site], limit: int = 5) -> str:
    parts = [f"{printable(s.name)} ({printable(s.graph)}): {printable(s.reason or '')}"
             for s in sites[:limit]]
    more = f"; and {len(sites) - limit} more" if len(sites) > limit else ""
    return "; ".join(parts) + more


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


@contextlib.contextmanager
def model_errors(src: str, action: str) -> Iterator[None]:
    """Turn an unexpected exception inside a pass into one line that says what is wrong.

    A model that loads can still be malformed inside (dangling names, attributes
    of the wrong type); the exception then comes from deep inside onnx or
    onnx_ir. The full onnx checker is asked what is wrong with the model, and its
    answer is the message; ``SPATIALDROP_ONNX_TRACEBACK=1`` shows the traceback.
    """
    try:
        yield
    except (UserError, SpatialDropoutError, click.ClickException, OSError, MemoryError):
        raise  # each has its own line and exit code (MemoryError: 6, never a re-load)
    except Exception as err:  # noqa: BLE001 - the safety net for malformed models
        if caused_by_memory(err):  # wrapped by a library: still exit 6, and no re-load
            raise MemoryError from err
        if os.environ.get(TRACEBACK_ENV):
            raise
        problem = _checker_verdict(src)
        if problem:
            raise UserError(f"{printable(src)}: cannot {action} this model, it is invalid: "
                            f"{printable(problem)}") from None
        raise UserError(f"{printable(src)}: cannot {action} this model "
                        f"({type(err).__name__}: {printable(_first_line(err))}; "
                        f"set {TRACEBACK_ENV}=1 for details)") from None


def _checker_verdict(src: str) -> str:
    """The onnx checker's first complaint about the model at ``src`` ("" if none)."""
    from ..isolation import checker_complaint
    from ..modelio import load_model

    try:
        return checker_complaint(load_model(src).model)
    except Exception as err:  # noqa: BLE001 - a model that does not even load again
        return _first_line(err)
