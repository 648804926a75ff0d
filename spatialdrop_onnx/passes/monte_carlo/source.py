"""The source model made ready to be sampled: dropout on, every site kept, output names free.

:func:`prepare` returns a copy of the model in which

* the ``training_mode`` switch is gone and a ``Constant`` true of that name takes
  its place (``graph.turn_switch_on``), so every site that read the switch (in
  subgraphs and, through call arguments, in functions) trains; an input of that
  name that is not the switch (not a boolean scalar) stays an ordinary input;
* every ONNX ``Dropout`` that trains is ``SpatialDropout(shared_axes=[])``
  (onnxruntime's ``EliminateDropout`` deletes an interior ``Dropout`` whatever
  its ``training_mode``, in the main graph and in Loop bodies alike);
* the names the Monte-Carlo outputs will take (``y_mean``, ``y_std``,
  ``y_samples``, and for classification outputs ``y_entropy``,
  ``y_expected_entropy``, ``y_mutual_information``) are free: a value of the
  model that had one is renamed.

It also decides which outputs are probability vectors (:func:`not_a_probability_vector`)
when classification statistics are asked for.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass

import onnx
from onnx import TensorProto

from ... import spec
from ...errors import UsageError, UserError, printable
from ...graph import (
    RANDOM_OPS,
    Constants,
    NameMaker,
    all_names,
    check_opset_imports,
    default_opset,
    dropout_to_spatial,
    input_at,
    is_default_domain,
    is_onnx_dropout,
    is_spatial_dropout,
    model_scopes,
    rename_values,
    turn_switch_on,
)

#: Output element types that are sampled; other outputs are left out of the MC model.
FLOAT_TYPES = frozenset({TensorProto.FLOAT16, TensorProto.FLOAT, TensorProto.DOUBLE,
                         TensorProto.BFLOAT16})
#: Lowest default-domain opset of the statistics nodes (ReduceSum/Squeeze take axes inputs;
#: Softmax normalises one axis).
MIN_OPSET = 13
#: Suffixes of the classification statistics, in output order.
CLASSIFICATION_SUFFIXES = ("_entropy", "_expected_entropy", "_mutual_information")


@dataclass(frozen=True)
class SampledOutput:
    """One float output of the source and the names of its statistics."""

    source: str  # the output's name in the source model
    value: str  # the value that holds it in the prepared model (renamed if it collided)
    info: onnx.ValueInfoProto  # its declared type
    mean: str
    std: str
    samples: str
    #: ``y_entropy``, ``y_expected_entropy``, ``y_mutual_information``; None when the
    #: output is not treated as a probability vector.
    classification: tuple[str, str, str] | None = None

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
    logits: bool  # the classification outputs are logits: softmax before the entropies
    had_switch: bool
    dropout_converted: int
    random_sites: int
    fresh: NameMaker


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


def not_a_probability_vector(info: onnx.ValueInfoProto, named: bool) -> str:
    """Why output ``info`` cannot be read as probability vectors along its last axis; "" if it
    can.

    A probability vector is a float tensor whose last axis is declared with size >= 2 (the
    classes). An output the user names may also have a last axis of unknown or symbolic size
    (the user vouches for it); a scalar or a last axis of size 0 or 1 never qualifies.
    """
    tensor = info.type.tensor_type
    if not info.type.HasField("tensor_type") or tensor.elem_type not in FLOAT_TYPES:
        return "it is not a float tensor"
    if not tensor.HasField("shape"):
        return "" if named else "its shape is not declared"
    if len(tensor.shape.dim) == 0:
        return "it is a scalar"
    last = tensor.shape.dim[-1]
    if last.HasField("dim_value"):
        size = int(last.dim_value)
        return "" if size >= 2 else f"its last axis has size {size} (classes need >= 2)"
    return "" if named else "the size of its last axis is not declared"


def _classification_outputs(outputs: list[onnx.ValueInfoProto],
                            classification: bool | Collection[str]) -> list[str]:
    """The outputs that get the classification statistics, in output order."""
    if classification is False:
        return []
    if classification is True:
        chosen = [o.name for o in outputs if not not_a_probability_vector(o, named=False)]
        if not chosen:
            why = "; ".join(f"{printable(o.name, 60)}: {not_a_probability_vector(o, False)}"
                            for o in outputs[:4])
            raise UserError("classification: no output is a probability vector (a float "
                            f"output whose last axis is declared with size >= 2) ({why}); "
                            "name one to use a last axis of symbolic size")
        return chosen
    if isinstance(classification, str):
        raise UsageError("classification must be True or a collection of output names, "
                         "not one string")
    names = list(dict.fromkeys(classification))
    by_name = {o.name: o for o in outputs}
    for name in names:
        if not isinstance(name, str):
            raise UsageError(f"classification output names must be strings, not "
                             f"{type(name).__name__}")
        info = by_name.get(name)
        if info is None:
            listed = ", ".join(printable(o.name, 60) for o in outputs[:8])
            raise UsageError(f"classification output {printable(name)} is not an output of the "
                             f"model (its outputs: {listed})")
        why = not_a_probability_vector(info, named=True)
        if why:
            raise UserError(f"classification output {printable(name)} is not a probability "
                            f"vector: {why}")
    if not names:
        raise UsageError("classification names no output")
    return [o.name for o in outputs if o.name in names]


def _random_looking(node: onnx.NodeProto) -> bool:
    """An op of another domain whose name says it draws (e.g. com.microsoft.BiasDropout)."""
    if is_default_domain(node.domain) or node.domain == spec.DOMAIN:
        return False
    name = node.op_type.lower()
    return any(word in name for word in ("dropout", "random", "bernoulli", "multinomial"))


def nothing_to_sample(model: onnx.ModelProto) -> str:
    """The one-line refusal for a model with no site that draws: what was found, what to do."""
    local = {(f.domain, f.name) for f in model.functions}
    inference = 0
    unknown: Counter[str] = Counter()
    for scope in model_scopes(model):
        for node in scope.nodes:
            if is_onnx_dropout(node) or is_spatial_dropout(node):
                inference += 1  # every dropout that could train was counted as a site
            elif _random_looking(node) and (node.domain, node.op_type) not in local:
                unknown[f"{node.domain}.{node.op_type}"] += 1
    found = "no dropout site that trains and no random op"
    if unknown:
        ops = ", ".join(f"{printable(op, 60)} x{count}" for op, count in unknown.most_common(4))
        return (f"the model has {found} this tool recognises, but it has op(s) that look "
                f"random and are not recognised: {ops}; Monte-Carlo sampling covers "
                "SpatialDropout, ONNX Dropout and the ONNX random ops: export the model with "
                "those (spatialdrop-onnx convert, spatialdrop_onnx.torch.export)")
    if inference:
        return (f"the model has {found}: its {inference} dropout node(s) never train "
                "(training_mode absent or constant false), so every sample would be the same; "
                "export it with dropout switchable (spatialdrop-onnx convert for Keras, "
                "spatialdrop_onnx.torch.export for PyTorch, or spatialdrop-onnx rewrite on an "
                "export whose dropout trains)")
    return (f"the model has {found} (a stripped model, or one whose exporter removed its "
            "dropout), so every sample would be the same; export it with dropout kept "
            "(spatialdrop-onnx convert for Keras, spatialdrop_onnx.torch.export for PyTorch)")


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


def prepare(model: onnx.ModelProto, classification: bool | Collection[str] = False,
            logits: bool = False) -> PreparedSource:
    """A prepared copy of ``model``; see the module docstring.

    ``classification``: True for every output that is a probability vector, or the names
    of the outputs to treat as one (:func:`not_a_probability_vector` says which may be).
    Raises UserError when there is nothing random to sample, no float output, no (or a
    wrong) classification output, or an opset too old for the statistics; UsageError when
    a named classification output is not an output of the model.
    """
    check_opset_imports(model)
    opset = default_opset(model.opset_import)
    if opset < MIN_OPSET:
        raise UserError(f"the model imports default-domain opset {opset}; the Monte-Carlo model "
                        f"needs >= {MIN_OPSET} (spatialdrop-onnx rewrite converts it)")
    result = onnx.ModelProto()
    result.CopyFrom(model)
    had_switch = turn_switch_on(result)
    converted = dropout_to_spatial(result)
    sites = count_random_sites(result)
    if sites == 0:
        raise UserError(nothing_to_sample(result))
    graph = result.graph
    floats = [o for o in graph.output if o.type.tensor_type.elem_type in FLOAT_TYPES]
    dropped = [o.name for o in graph.output if o.type.tensor_type.elem_type not in FLOAT_TYPES]
    if not floats:
        raise UserError("the model has no float output to take the mean and deviation of")
    if len({o.name for o in graph.output}) != len(graph.output):
        raise UserError("the model lists one value as an output twice")
    classified = _classification_outputs(list(graph.output), classification)
    wanted = {o.name: (o.name + "_mean", o.name + "_std", o.name + "_samples") for o in floats}
    extra = {name: tuple(name + suffix for suffix in CLASSIFICATION_SUFFIXES)
             for name in classified}
    input_names = {i.name for i in graph.input}
    taken = _main_tree_names(result)
    new_names = [*(n for names in wanted.values() for n in names),
                 *(n for names in extra.values() for n in names)]
    fresh = NameMaker(all_names(result) | set(new_names))
    renames: dict[str, str] = {}
    for name in new_names:
        if name in input_names:
            raise UserError(f"the model has an input named {printable(name)}, the name the "
                            "Monte-Carlo model gives a statistic; rename that input first")
        if name in taken:
            renames[name] = fresh(name)
    outputs = []
    for info in floats:  # before renaming: the statistics are named after the source's outputs
        mean, std, samples = wanted[info.name]
        outputs.append(SampledOutput(info.name, renames.get(info.name, info.name), _copy(info),
                                     mean, std, samples, extra.get(info.name)))
    rename_values(graph, renames)
    return PreparedSource(result, [_copy(i) for i in graph.input], outputs, dropped,
                          logits and bool(classified), had_switch, converted, sites, fresh)


def _copy(info: onnx.ValueInfoProto) -> onnx.ValueInfoProto:
    copy = onnx.ValueInfoProto()
    copy.CopyFrom(info)
    return copy


def our_domain_used(model: onnx.ModelProto) -> bool:
    """Whether a SpatialDropout node is left anywhere (the model then needs its bodies)."""
    return any(n.domain == spec.DOMAIN for s in model_scopes(model) for n in s.nodes)
