"""What every pass takes and returns: a model (or a path to one) in, the model and a report out."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Generic, TypeVar

import onnx

if TYPE_CHECKING:
    from ..modelio import LoadedModel
    from ..modelio.skeleton import SkeletonSource

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


@dataclass(frozen=True)
class PassInput:
    """What a pass works on: the model, the folder of its external data, where it came from."""

    model: onnx.ModelProto
    folder: Path | None
    #: The loaded file (a skeleton's source file stays open in it), or None for a ModelProto.
    loaded: LoadedModel | None = None
    #: True when the pass loaded the file itself: it must return a complete model.
    owned: bool = False

    @property
    def source(self) -> SkeletonSource | None:
        """The file the placeholders of a skeleton refer to (None: the model is complete)."""
        return None if self.loaded is None else self.loaded.skeleton

    def complete(self, result: onnx.ModelProto) -> onnx.ModelProto:
        """``result``, with the data of its placeholders read back when this pass loaded a
        skeleton itself (a caller that passed a ``LoadedModel`` saves it with
        ``save_model(..., source=loaded)``, which copies the data instead)."""
        source = self.source
        if self.owned and source is not None:
            from ..modelio import fill_placeholders

            fill_placeholders(result, source)
            source.close()
        return result


def load_argument(model: object, work: str) -> PassInput:
    """The :class:`PassInput` for what a user passed, once there is memory for ``work``
    (a key of :data:`~spatialdrop_onnx.headroom.PEAK_FACTOR`; OutOfMemory otherwise).

    Paths load through :func:`spatialdrop_onnx.modelio.load_model` (checked,
    external data validated) as a skeleton: large tensors are not read until
    :meth:`PassInput.complete`; a ``LoadedModel`` keeps its folder (and its
    skeleton source); a bare ``ModelProto`` has no folder, so its external
    constants are never read.
    """
    from ..headroom import ensure_headroom
    from ..modelio import LoadedModel, load_model

    if isinstance(model, onnx.ModelProto):
        given = PassInput(model, None)
    elif isinstance(model, LoadedModel):
        given = PassInput(model.model, model.folder, model)
    elif isinstance(model, (str, os.PathLike)):
        loaded = load_model(model, skeleton=True)
        given = PassInput(loaded.model, loaded.folder, loaded, owned=True)
    else:
        raise TypeError(f"expected an onnx.ModelProto or a path to an ONNX file, "
                        f"not {type(model).__name__}")
    ensure_headroom(given.model, work)
    return given

