"""What every pass takes and returns: a model (or a path to one) in, the model and a report out."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

import onnx

ReportT = TypeVar("ReportT")

#: A model argument: a ModelProto, or the path of an ONNX file (loaded safely).
ModelArg = onnx.ModelProto | str | os.PathLike


@dataclass(frozen=True)
class PassResult(Generic[ReportT]):
    """A pass's output model and its typed report; unpacks as ``model, report``."""

    model: onnx.ModelProto
    report: ReportT

    def __iter__(self) -> Iterator[object]:
        return iter((self.model, self.report))


def load_argument(model: object) -> tuple[onnx.ModelProto, Path | None]:
    """``(model, folder its external data is relative to)`` from what a user passed.

    Paths load through :func:`spatialdrop_onnx.modelio.load_model` (checked,
    external data validated); a ``LoadedModel`` keeps its folder; a bare
    ``ModelProto`` has none, so its external constants are never read.
    """
    from ..modelio import LoadedModel, load_model

    if isinstance(model, onnx.ModelProto):
        return model, None
    if isinstance(model, LoadedModel):
        return model.model, model.folder
    if isinstance(model, (str, os.PathLike)):
        loaded = load_model(model)
        return loaded.model, loaded.folder
    raise TypeError(f"expected an onnx.ModelProto or a path to an ONNX file, "
                    f"not {type(model).__name__}")

