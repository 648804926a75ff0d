"""onnxruntime sessions in which ``training_mode`` really switches dropout on.

Two onnxruntime facts about ONNX ``Dropout`` make a plain session wrong for a
training-mode model:

* the session optimiser ``EliminateDropout`` deletes every ``Dropout`` whose
  output is not a graph output, also when its ``training_mode`` input is true:
  element-wise dropout would silently never train;
* the CPU kernel draws each run's mask from a ``std::default_random_engine``
  seeded with the process-wide seed plus one per call, so successive runs' masks
  are fixed shifts of each other (the first element is kept or dropped in every
  run of a session): repeated runs are not independent samples
  (``graph.elementwise``).

``inference_session`` turns that optimiser off, registers the native kernel, and
hands onnxruntime the model with every ``Dropout`` that can train written as
``SpatialDropout(shared_axes=[])`` (same computation, our random stream); the
file on disk is not touched.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence

import onnx
import onnxruntime as ort

from .function_body import MIN_OPSET, make_portable
from .graph import default_opset, dropout_to_spatial, has_training_dropout
from .modelio import load_model
from .native import register_kernel

#: onnxruntime optimisers that break training-mode dropout.
DROPOUT_BREAKING_OPTIMIZERS = ("EliminateDropout",)
#: What a converter says about a model with ONNX Dropout nodes.
ORT_DROPOUT_NOTE = ("the model has ONNX Dropout nodes: onnxruntime's EliminateDropout deletes "
                    "them even with training_mode true, and its Dropout's masks are not "
                    "independent from run to run; for training-mode sessions use "
                    "spatialdrop_onnx.inference_session(), or write them as SpatialDropout "
                    "(rewrite --elementwise spatial)")
#: onnxruntime's session option naming the folder external data is relative to when the
#: model comes as bytes.
EXTERNAL_DATA_FOLDER = "session.model_external_initializers_file_folder_path"


def inference_session(
    model: onnx.ModelProto | str | os.PathLike,
    *,
    native: bool = True,
    so: ort.SessionOptions | None = None,
    providers: Sequence[str] = ("CPUExecutionProvider",),
) -> ort.InferenceSession:
    """A session for ``model`` (proto or path) whose dropout obeys ``training_mode``.

    ONNX ``Dropout`` nodes that can train run as ``SpatialDropout(shared_axes=[])``, so
    every run draws a mask independent of the last (see the module's docstring).
    With ``native`` the SpatialDropout kernel is registered; without it the
    model's function bodies run; the kernel is registered on ``so`` when you pass
    options (they become this session's). Without ``so``, onnxruntime logs errors only:
    its load warning about the ``training_mode`` initializer ("Initializer
    training_mode appears in graph inputs …") recommends a script that would
    freeze the switch, and is expected for every converted model.
    """
    if so is None:
        so = ort.SessionOptions()
        so.log_severity_level = 3
    if native:
        so = register_kernel(so)
    return ort.InferenceSession(_as_sampled(model, native, so), sess_options=so,
                                providers=list(providers),
                                disabled_optimizers=list(DROPOUT_BREAKING_OPTIMIZERS))


def _as_sampled(model: onnx.ModelProto | str | os.PathLike, native: bool,
                so: ort.SessionOptions) -> bytes | str:
    """What the session loads: ``model`` itself when no ONNX Dropout of it can train, else a
    copy with those written as SpatialDropout (with function bodies when ``native`` is off)."""
    loaded = None if isinstance(model, onnx.ModelProto) else load_model(model)
    proto = model if loaded is None else loaded.model
    as_given = proto.SerializeToString() if loaded is None else os.fspath(model)
    if not has_training_dropout(proto):
        return as_given
    if not native and default_opset(proto.opset_import) < MIN_OPSET:
        warnings.warn(f"the model's ONNX Dropout nodes run as onnxruntime's Dropout, whose masks "
                      f"are not independent from run to run: without the native kernel they "
                      f"need default-domain opset >= {MIN_OPSET} to run as SpatialDropout",
                      RuntimeWarning, stacklevel=3)
        return as_given
    sampled = onnx.ModelProto()
    sampled.CopyFrom(proto)
    dropout_to_spatial(sampled)
    if not native:
        sampled = make_portable(sampled)
    if loaded is not None and loaded.data_files:
        # Bytes have no folder: external data stays where the file says it is.
        so.add_session_config_entry(EXTERNAL_DATA_FOLDER, str(loaded.folder))
    return sampled.SerializeToString()
