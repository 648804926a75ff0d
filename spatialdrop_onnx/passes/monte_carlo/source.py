"""The source model made ready to be sampled: dropout on, every site kept, output names free.

:func:`prepare` returns a copy of the model in which

* the ``training_mode`` graph input is gone and a ``Constant`` true of that name
  takes its place, so every site that read the switch (in subgraphs and, through
  call arguments, in functions) trains;
* every ONNX ``Dropout`` that trains is ``SpatialDropout(shared_axes=[])``
  (onnxruntime's ``EliminateDropout`` deletes an interior ``Dropout`` whatever
  its ``training_mode``, in the main graph and in Loop bodies alike);
* the names the Monte-Carlo outputs will take (``y_mean``, ``y_std``,
  ``y_samples``) are free: a value of the model that had one is renamed.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx
from onnx import TensorProto
from onnx import helper as oh

from ... import spec
from ...errors import UserError, printable
from ...graph import (
    RANDOM_OPS,
    TRAINING_MODE,
    Constants,
    NameMaker,
    all_names,
    check_opset_imports,
    default_opset,
    input_at,
    is_spatial_dropout,
    model_scopes,
    rename_values,
)
from ...inline import dropout_to_spatial

#: Output element types that are sampled; other outputs are left out of the MC model.
FLOAT_TYPES = frozenset({TensorProto.FLOAT16, TensorProto.FLOAT, TensorProto.DOUBLE,
                         TensorProto.BFLOAT16})
#: Lowest default-domain opset of the statistics nodes (ReduceSum/Squeeze take axes inputs).
MIN_OPSET = 13


@dataclass(frozen=True)
class SampledOutput:
    """One float output of the source and the names of its statistics."""

    source: str  # the output's name in the source model
    value: str  # the value that holds it in the prepared model (renamed if it collided)
    info: onnx.ValueInfoProto  # its declared type
    mean: str
    std: str
    samples: str

    @property
    def elem_type(self) -> int:
        return self.info.type.tensor_type.elem_type

    @property
    def dims(self) -> list[onnx.TensorShapeProto.Dimension] | None:
        tensor = self.info.type.tensor_type
        return list(tensor.shape.dim) if tensor.HasField("shape") else None


@dataclass
class PreparedSource:
    """The prepared copy and what the Monte-Carlo graph is built from."""

    model: onnx.ModelProto
    inputs: list[onnx.ValueInfoProto]  # the MC model's inputs: the source's minus the switch
    outputs: list[SampledOutput]
    dropped: list[str]  # non-float outputs, not sampled
    had_switch: bool
    dropout_converted: int
    random_sites: int
    fresh: NameMaker


def _is_bool_scalar_or_shapeless(info: onnx.ValueInfoProto) -> bool:
    tensor = info.type.tensor_type
    return (info.type.HasField("tensor_type") and tensor.elem_type == TensorProto.BOOL
            and (not tensor.HasField("shape") or len(tensor.shape.dim) == 0))


def _switch_on(model: onnx.ModelProto) -> bool:
    """Replace the ``training_mode`` graph input by a Constant true; False if there is none."""
    graph = model.graph
    flag = next((i for i in graph.input if i.name == TRAINING_MODE), None)
    if flag is None:
        return False
    if not _is_bool_scalar_or_shapeless(flag):
        raise UserError(f"the model's input {TRAINING_MODE!r} is not a boolean scalar: it is not "
                        "the dropout switch this tool turns on")
    kept = [i for i in graph.input if i.name != TRAINING_MODE]
    del graph.input[:]
    graph.input.extend(kept)
    kept_init = [i for i in graph.initializer if i.name != TRAINING_MODE]
    del graph.initializer[:]
    graph.initializer.extend(kept_init)
    constant = oh.make_node("Constant", [], [TRAINING_MODE], name=TRAINING_MODE,
                            value=oh.make_tensor(TRAINING_MODE, TensorProto.BOOL, [], [True]))
    graph.node.insert(0, constant)
    return True


def count_random_sites(model: onnx.ModelProto) -> int:
    """Nodes that draw: training SpatialDropout and random ops (our function bodies excluded)."""
    constants = Constants(model)
    count = 0
    for scope in model_scopes(model):
        for node in scope.nodes:
            if node.op_type in RANDOM_OPS:
                count += 1
            elif is_spatial_dropout(node):
                flag = input_at(node, 2)
                if flag and constants.scalar(scope, flag) not in (False, 0):
                    count += 1
    return count


def _main_tree_names(model: onnx.ModelProto) -> set[str]:
    names: set[str] = set()
    for scope in model_scopes(model):
        if scope.function is not None:
            continue
        names.update(scope.input_names)
        names.update(scope.output_names)
        if scope.graph is not None:
            names.update(i.name for i in scope.graph.initializer)
        for node in scope.nodes:
            names.update(node.input)
            names.update(node.output)
    names.discard("")
    return names


def prepare(model: onnx.ModelProto) -> PreparedSource:
    """A prepared copy of ``model``; see the module docstring. Raises UserError when there is
    nothing random to sample, no float output, or an opset too old for the statistics."""
    check_opset_imports(model)
    opset = default_opset(model.opset_import)
    if opset < MIN_OPSET:
        raise UserError(f"the model imports default-domain opset {opset}; the Monte-Carlo model "
                        f"needs >= {MIN_OPSET} (spatialdrop-onnx rewrite converts it)")
    result = onnx.ModelProto()
    result.CopyFrom(model)
    had_switch = _switch_on(result)
    converted = dropout_to_spatial(result)
    sites = count_random_sites(result)
    if sites == 0:
        raise UserError("the model has no dropout that trains and no random op: every sample "
                        "would be the same (rewrite or convert the model first; a stripped model "
                        "has nothing left to sample)")
    graph = result.graph
    floats = [o for o in graph.output if o.type.tensor_type.elem_type in FLOAT_TYPES]
    dropped = [o.name for o in graph.output if o.type.tensor_type.elem_type not in FLOAT_TYPES]
    if not floats:
        raise UserError("the model has no float output to take the mean and deviation of")
    if len({o.name for o in graph.output}) != len(graph.output):
        raise UserError("the model lists one value as an output twice")
    wanted = {o.name: (o.name + "_mean", o.name + "_std", o.name + "_samples") for o in floats}
    input_names = {i.name for i in graph.input}
    taken = _main_tree_names(result)
    fresh = NameMaker(all_names(result) | {n for names in wanted.values() for n in names})
    renames: dict[str, str] = {}
    for names in wanted.values():
        for name in names:
            if name in input_names:
                raise UserError(f"the model has an input named {printable(name)}, the name the "
                                "Monte-Carlo model gives a statistic; rename that input first")
            if name in taken:
                renames[name] = fresh(name)
    outputs = []
    for info in floats:  # before renaming: the statistics are named after the source's outputs
        mean, std, samples = wanted[info.name]
        outputs.append(SampledOutput(info.name, renames.get(info.name, info.name), _copy(info),
                                     mean, std, samples))
    rename_values(graph, renames)
    return PreparedSource(result, [_copy(i) for i in graph.input], outputs, dropped, had_switch,
                          converted, sites, fresh)


def _copy(info: onnx.ValueInfoProto) -> onnx.ValueInfoProto:
    copy = onnx.ValueInfoProto()
    copy.CopyFrom(info)
    return copy


def our_domain_used(model: onnx.ModelProto) -> bool:
    """Whether a SpatialDropout node is left anywhere (the model then needs its bodies)."""
    return any(n.domain == spec.DOMAIN for s in model_scopes(model) for n in s.nodes)
