"""ONNX ``Dropout`` that trains, written as ``SpatialDropout(shared_axes=[])``.

The same computation (one keep/drop decision per element, kept values scaled by
1/(1-ratio)), drawn by our kernel or our function body instead of the runtime's
``Dropout``. Three places need it, each for a runtime fact:

* onnxruntime's ``EliminateDropout`` deletes an interior ``Dropout`` whatever its
  ``training_mode`` (``mc``);
* onnxruntime's CPU ``Dropout`` seeds a fresh ``std::default_random_engine``
  (``minstd_rand0`` with libstdc++) with the process-wide seed plus one per call: the
  masks of successive runs are fixed shifts of each other, and an element's draw
  moves by 16807^i/(2^31-1) from run to run — the first element's by 8e-6, so it is
  kept or dropped in every run of a session (``sessions.inference_session``);
* OpenVINO refuses a ``Dropout`` in training mode (``inline``).
"""

from __future__ import annotations

import onnx
from onnx import helper as oh

from .. import spec
from .constants import Constants
from .nodes import get_attr, input_at, is_onnx_dropout
from .scopes import Scope, model_scopes


def dropout_trains(node: onnx.NodeProto, constants: Constants, scope: Scope) -> bool:
    """An ONNX Dropout that can train: it reads a training_mode that is not a constant false."""
    flag = input_at(node, 2)
    return bool(flag) and constants.scalar(scope, flag) not in (False, 0)


def has_training_dropout(model: onnx.ModelProto) -> bool:
    """Whether any ONNX Dropout of ``model`` (at any depth) can train."""
    constants = Constants(model)
    return any(is_onnx_dropout(node) and dropout_trains(node, constants, scope)
               for scope in model_scopes(model) for node in scope.nodes)


def dropout_to_spatial(model: onnx.ModelProto) -> int:
    """Turn every ONNX Dropout that can train into SpatialDropout(shared_axes=[]), in place;
    return how many. A seed is kept; our opset is imported where a node was changed."""
    constants = Constants(model)
    converted = 0
    for scope in model_scopes(model):
        for node in scope.nodes:
            if not is_onnx_dropout(node) or not dropout_trains(node, constants, scope):
                continue
            seed = get_attr(node, "seed")
            del node.attribute[:]
            node.attribute.append(oh.make_attribute(spec.ATTR_SHARED_AXES, [],
                                                    attr_type=onnx.AttributeProto.INTS))
            if seed is not None:
                node.attribute.append(oh.make_attribute(spec.ATTR_SEED, int(seed.i)))
            node.op_type, node.domain = spec.OP_TYPE, spec.DOMAIN
            converted += 1
            owner = scope.function if scope.function is not None else model
            if not any(o.domain == spec.DOMAIN for o in owner.opset_import):
                owner.opset_import.append(oh.make_opsetid(spec.DOMAIN, spec.OPSET_VERSION))
    return converted
