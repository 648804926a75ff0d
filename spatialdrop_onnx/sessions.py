"""onnxruntime sessions in which ``training_mode`` really switches dropout on.

onnxruntime's session optimiser ``EliminateDropout`` deletes every ONNX
``Dropout`` whose output is not a graph output — also when its
``training_mode`` input is true — so a converted model's element-wise dropout
would silently never train. ``inference_session`` turns that optimiser off
and registers the native kernel.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import onnx
import onnxruntime as ort

from .native import register_kernel

#: onnxruntime optimisers that break training-mode dropout.
DROPOUT_BREAKING_OPTIMIZERS = ("EliminateDropout",)
#: What a converter says about a model with ONNX Dropout nodes.
ORT_DROPOUT_NOTE = ("the model has ONNX Dropout nodes: onnxruntime deletes them during graph "
                    "optimisation even with training_mode true; for training-mode sessions use "
                    "spatialdrop_onnx.inference_session(), or pass "
                    "disabled_optimizers=['EliminateDropout'] to InferenceSession")


def inference_session(
    model: onnx.ModelProto | str | os.PathLike,
    *,
    native: bool = True,
    so: ort.SessionOptions | None = None,
    providers: Sequence[str] = ("CPUExecutionProvider",),
) -> ort.InferenceSession:
    """A session for ``model`` (proto or path) whose dropout obeys ``training_mode``.

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
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else os.fspath(model)
    return ort.InferenceSession(source, sess_options=so, providers=list(providers),
                                disabled_optimizers=list(DROPOUT_BREAKING_OPTIMIZERS))
