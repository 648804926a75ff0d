"""Model-local function bodies for SpatialDropout, built from standard ONNX ops.

``make_portable(model)`` lets every runtime without our kernel still run the
model. Design choices forced by the runtimes (see docs/function-body.md):

* ``RandomUniformLike.seed`` is a float attribute and our ``seed`` an int, so
  an attribute reference cannot carry it: nodes are grouped by seed and each
  seed gets its own function *overload* with the seed baked in.
* onnxruntime cannot run a function whose declared inputs/outputs the node
  omits, and ``ReferenceEvaluator`` refuses omitted attributes, so nodes are
  made explicit: default ``ratio``/``training_mode`` become Constant nodes, an
  unused ``mask`` output gets a private name, and the default ``shared_axes``
  is written out when the rank is known. What the node computes is unchanged.
* The body ``inline`` splices in is written with the plainest ops, so that
  runtimes with static shapes (tract) and converters (onnx2tf) follow it: no
  ``If``, no subgraph, no shape that depends on the value of ``training_mode``
  (the switch is folded into arithmetic: keep iff u >= ratio*t, scale
  1/(1 - ratio*t)), no double tensors unless the model computes in double, every
  node named. ``make_portable`` attaches the same computation with the full-size
  work inside ``If(training_mode)`` (identity otherwise): onnxruntime then skips
  it in inference.
* Each node gets the variant its inputs allow (:class:`Variant`): its seed, its
  data type (float16/bfloat16 multiply through float), and, when the rank is
  known, its shared axes (the noise-shaped tensor is a ``Slice`` of the data).
  When the rank is unknown, the generic body computes the noise shape at run time
  (the function's ``shared_axes`` default is a sentinel resolved there to axes
  2..rank-1).
* Errors (bad ratio, bad axes for the rank) surface as a failing ``Gather``
  in a node named after the rule it checks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

import onnx
from onnx import AttributeProto, FunctionProto, NodeProto, TensorProto
from onnx import helper as oh

from . import spec
from .graph import (
    NameMaker,
    Scope,
    TypeFacts,
    all_names,
    default_opset,
    get_attr,
    import_our_domain,
    is_spatial_dropout,
    model_scopes,
    type_facts,
)

#: Lowest default-domain opset the body is written for (CastLike, Shape-15).
MIN_OPSET = 15
#: ``shared_axes`` default inside the function: "attribute absent, use 2..rank-1".
DEFAULT_AXES_SENTINEL = -(2**62)

_INT64 = TensorProto.INT64
_DOUBLE = TensorProto.DOUBLE


def _const(name: str, value: object, dtype: int) -> NodeProto:
    shape = [len(value)] if isinstance(value, list) else []
    values = value if isinstance(value, list) else [value]
    return oh.make_node("Constant", [], [name], value=oh.make_tensor(name, dtype, shape, values))


def _guard(check: str, ok: str, out: str) -> list[NodeProto]:
    """Nodes yielding int64 0 in ``out`` when ``ok`` is true, and failing otherwise.

    ONNX has no assert op: an out-of-range Gather fails, and the runtime's
    message names the node, so the node is named after the rule it checks.
    """
    return [
        oh.make_node("Not", [ok], [f"{out}_bad"]),
        oh.make_node("Cast", [f"{out}_bad"], [f"{out}_idx"], to=_INT64),
        oh.make_node("Gather", ["zero_vec", f"{out}_idx"], [out], name=check),
    ]


def _noise_shape_nodes(axes_node: NodeProto) -> list[NodeProto]:
    """``noise`` (int64[rank]) from ``data`` and ``axes`` (made by ``axes_node``), with checks.

    ``axes`` holding only ``DEFAULT_AXES_SENTINEL`` means the default axes.
    """
    return [
        _const("zero_i", 0, _INT64),
        _const("one_i", 1, _INT64),
        _const("first_shared", spec.DEFAULT_FIRST_SHARED_AXIS, _INT64),
        _const("sentinel", DEFAULT_AXES_SENTINEL, _INT64),
        _const("axis1", [1], _INT64),
        _const("axis0", [0], _INT64),
        oh.make_node("Shape", ["data"], ["shape"]),
        oh.make_node("Size", ["shape"], ["rank"]),
        oh.make_node("Greater", ["rank", "zero_i"], ["rank_ok"]),
        *_guard("check_data_rank_at_least_1", "rank_ok", "g_rank"),
        # idx = [0, 1, ..., rank-1], built as CumSum(ones like shape) - 1 rather
        # than Range, whose inferred length onnxruntime gets wrong for static shapes.
        oh.make_node("Shape", ["shape"], ["rank_vec"]),
        oh.make_node("ConstantOfShape", ["rank_vec"], ["ones_like_shape"],
                     value=oh.make_tensor("one", _INT64, [1], [1])),
        oh.make_node("CumSum", ["ones_like_shape", "zero_i"], ["counts"]),
        oh.make_node("Sub", ["counts", "one_i"], ["idx"]),
        axes_node,
        oh.make_node("Size", ["axes"], ["n_axes"]),
        # Default axes: the attribute holds only the sentinel.
        oh.make_node("Concat", ["axes", "zero_vec"], ["axes_padded"], axis=0),
        oh.make_node("Gather", ["axes_padded", "zero_i"], ["first_axis"]),
        oh.make_node("Equal", ["first_axis", "sentinel"], ["is_default"]),
        oh.make_node("GreaterOrEqual", ["idx", "first_shared"], ["default_b"]),
        oh.make_node("Cast", ["default_b"], ["default_hits"], to=_INT64),
        # Explicit axes: normalise negatives, count how often each axis is named.
        oh.make_node("Less", ["axes", "zero_i"], ["neg_b"]),
        oh.make_node("Cast", ["neg_b"], ["neg"], to=_INT64),
        oh.make_node("Mul", ["neg", "rank"], ["shift"]),
        oh.make_node("Add", ["axes", "shift"], ["norm"]),
        oh.make_node("Unsqueeze", ["idx", "axis1"], ["idx_col"]),
        oh.make_node("Unsqueeze", ["norm", "axis0"], ["norm_row"]),
        oh.make_node("Equal", ["idx_col", "norm_row"], ["hit_b"]),
        oh.make_node("Cast", ["hit_b"], ["hit"], to=_INT64),
        oh.make_node("ReduceSum", ["hit", "axis1"], ["explicit_hits"], keepdims=0),
        # Valid iff every axis hits exactly one dim (in range) and none twice.
        oh.make_node("ReduceSum", ["explicit_hits"], ["n_hits"], keepdims=0),
        oh.make_node("Equal", ["n_hits", "n_axes"], ["in_range"]),
        oh.make_node("Greater", ["explicit_hits", "one_i"], ["dup_b"]),
        oh.make_node("Cast", ["dup_b"], ["dup"], to=_INT64),
        oh.make_node("ReduceSum", ["dup"], ["n_dup"], keepdims=0),
        oh.make_node("Equal", ["n_dup", "zero_i"], ["no_dup"]),
        oh.make_node("And", ["in_range", "no_dup"], ["explicit_ok"]),
        oh.make_node("Or", ["is_default", "explicit_ok"], ["axes_ok"]),
        *_guard("check_shared_axes_valid_for_rank", "axes_ok", "g_axes"),
        oh.make_node("Where", ["is_default", "default_hits", "explicit_hits"], ["hits"]),
        oh.make_node("Greater", ["hits", "zero_i"], ["shared_b"]),
        oh.make_node("Where", ["shared_b", "one_i", "shape"], ["noise_raw"]),
        oh.make_node("Add", ["g_rank", "g_axes"], ["g_shape"]),
        oh.make_node("Add", ["noise_raw", "g_shape"], ["noise"]),
    ]


def _axes_from_attribute() -> NodeProto:
    node = oh.make_node("Constant", [], ["axes"])
    node.attribute.append(AttributeProto(
        name="value_ints", ref_attr_name=spec.ATTR_SHARED_AXES, type=AttributeProto.INTS))
    return node


def runtime_noise_shape(data: str, noise: str, axes: list[int] | None,
                        fresh: NameMaker) -> list[NodeProto]:
    """Nodes computing ``noise`` = the shape of ``data`` with 1 at the shared ``axes``
    (None: the default axes), for a rank known only at run time (default opset >= 13).

    The same construction as the function body's, with every internal name made fresh.
    """
    literal = [DEFAULT_AXES_SENTINEL] if axes is None else list(axes)
    axes_node = oh.make_node("Constant", [], ["axes"])
    axes_node.attribute.append(oh.make_attribute("value_ints", literal,
                                                 attr_type=AttributeProto.INTS))
    nodes = [_const("zero_vec", [0], _INT64), *_noise_shape_nodes(axes_node)]
    renamed: dict[str, str] = {"data": data, "noise": noise}
    for node in nodes:
        for names in (node.input, node.output):
            for i, name in enumerate(names):
                if name not in renamed:
                    renamed[name] = fresh(f"{noise}/{name}")
                names[i] = renamed[name]
        node.name = fresh(f"{noise}/{node.name or node.op_type}")
    return nodes



def _named(nodes: list[NodeProto]) -> list[NodeProto]:
    """Name every unnamed node after its first output (tract, onnx2tf and error messages
    read node names; the guards and the draw are named on purpose)."""
    for node in nodes:
        if not node.name:
            node.name = node.output[0]
    return nodes


#: The name of the draw. tract decides whether a random op is a ``*Like`` op from the
#: node's *name* (it must end in ``Like``), not from its type.
DRAW_NODE = "draw_RandomUniformLike"


@dataclass(frozen=True)
class Variant:
    """What one function overload bakes in (see ``build_function``).

    ``data_type``: T when known (the casts are written as ``Cast(to=T)``, which
    onnx2tf converts and ``CastLike`` it does not), None for a body that must take
    every T. ``compute``: the type the ratio, the switch and the scale are computed
    in, and the product taken in (float or double). ``axes``: the shared axes
    resolved for a known rank (the noise-shaped tensor is a ``Slice`` of the data),
    None to read them from the attribute and find the noise shape at run time.
    ``twin``: the site's number among the unseeded sites of its graph, for inlining
    (its draw's range, see ``_draw_nodes``).
    """

    seed: int | None = None
    data_type: int | None = None
    compute: int = _DOUBLE
    axes: tuple[int, ...] | None = None
    twin: int = 0

    @property
    def name(self) -> str:
        """The overload name; the generic variant (every T, any rank) is ''."""
        parts = []
        if self.seed is not None:
            parts.append(f"seed_{self.seed}" if self.seed >= 0 else f"seed_m{-self.seed}")
        if self.data_type is not None:
            parts.append(_TYPE_NAMES[self.data_type])
            if self.compute != self.data_type:
                parts.append(f"in_{_TYPE_NAMES[self.compute]}")
        elif self.compute != _DOUBLE:
            parts.append(f"any_in_{_TYPE_NAMES[self.compute]}")
        if self.axes is not None:
            parts.append("shared_" + "_".join(map(str, self.axes)) if self.axes else "unshared")
        if self.twin:
            parts.append(f"twin{self.twin}")
        return "_".join(parts)


GENERIC = Variant()
_TYPE_NAMES = {TensorProto.FLOAT16: "float16", TensorProto.FLOAT: "float",
               TensorProto.DOUBLE: "double", TensorProto.BFLOAT16: "bfloat16"}


def choose_arithmetic(data_type: int | None, ratio_type: int | None) -> tuple[int | None, int]:
    """``(data_type, compute)`` for a node whose data and ratio have these types.

    Float unless the model already computes in double (double data or ratio): a float
    scale 1/(1-ratio) is within one ulp of the double one rounded to float (identical
    at most ratios; docs/function-body.md). Unknown types take the generic body.
    """
    if data_type not in _TYPE_NAMES or ratio_type not in _TYPE_NAMES:
        return None, _DOUBLE
    if _DOUBLE in (data_type, ratio_type):
        return data_type, _DOUBLE
    return data_type, TensorProto.FLOAT


def _switch_nodes(compute: int) -> list[NodeProto]:
    """The ratio checked, and the switch folded into arithmetic, all in ``compute``:
    ``drop`` = ratio when training, 0 otherwise; ``scale`` = 1/(1 - drop);
    ``threshold`` = drop in float (the draws' type)."""
    nodes = [
        _const("zero_vec", [0], _INT64),
        _const("zero_c", 0.0, compute),
        _const("one_c", 1.0, compute),
        oh.make_node("Cast", ["ratio"], ["ratio_raw"], to=compute),
        oh.make_node("GreaterOrEqual", ["ratio_raw", "zero_c"], ["ratio_ge0"]),
        oh.make_node("LessOrEqual", ["ratio_raw", "one_c"], ["ratio_le1"]),
        oh.make_node("And", ["ratio_ge0", "ratio_le1"], ["ratio_ok"]),
        *_guard("check_ratio_in_0_1", "ratio_ok", "g_ratio"),
        # The guard's 0 is added in, so no runtime prunes the check as dead code.
        oh.make_node("Cast", ["g_ratio"], ["g_ratio_c"], to=compute),
        oh.make_node("Add", ["ratio_raw", "g_ratio_c"], ["ratio_c"]),
        oh.make_node("Cast", ["training_mode"], ["switch_c"], to=compute),
        oh.make_node("Mul", ["ratio_c", "switch_c"], ["drop_c"]),
        oh.make_node("Sub", ["one_c", "drop_c"], ["keep_prob"]),
        # Reciprocal, not Div(1, .): onnxruntime fuses Div(1, x) -> Mul(d, .) into Div(d, x),
        # which is not d times the rounded scale.
        oh.make_node("Reciprocal", ["keep_prob"], ["scale_c"]),
    ]
    if compute != TensorProto.FLOAT:
        nodes.append(oh.make_node("Cast", ["drop_c"], ["threshold"], to=TensorProto.FLOAT))
    return nodes


def _threshold(compute: int) -> str:
    return "drop_c" if compute == TensorProto.FLOAT else "threshold"


def _noise_like_nodes(axes: tuple[int, ...] | None, source: str) -> list[NodeProto]:
    """``noise_like``: a tensor of the noise shape. For known axes, ``source`` (the data,
    or the data in the compute type: ``RandomUniformLike`` takes no bfloat16) sliced to
    length 1 on them (no shape arithmetic: runtimes that need static shapes follow it);
    otherwise zeros of the noise shape computed at run time from the attribute, with the
    rank and axes checks (the rank was unknown when the body was chosen)."""
    if axes is None:
        return [*_noise_shape_nodes(_axes_from_attribute()),
                oh.make_node("ConstantOfShape", ["noise"], ["noise_like"])]
    if not axes:
        return [oh.make_node("Identity", [source], ["noise_like"])]
    count = len(axes)
    return [
        _const("slice_starts", [0] * count, _INT64),
        _const("slice_ends", [1] * count, _INT64),
        _const("slice_axes", list(axes), _INT64),
        oh.make_node("Slice", [source, "slice_starts", "slice_ends", "slice_axes"],
                     ["noise_like"]),
    ]


#: The largest power of two a twin draws up to (``_draw_nodes``): 2**126 * u stays finite
#: in float and 2**-126 is normal, so scaling back is exact.
MAX_TWIN_EXPONENT = 126


def _draw_nodes(seed: int | None, twin: int, threshold: str) -> list[NodeProto]:
    """``mask`` = u >= threshold, u uniform float over the noise shape.

    Float draws: OpenVINO converts ``RandomUniformLike`` to float only. With the switch
    off the threshold is 0 and every decision is 'keep'. A ``twin`` k > 0 draws from
    [0, 2**k) and compares with threshold * 2**k (both exact in float: the decisions of a
    draw from [0, 1)), so that its node differs from every other draw of its graph:
    OpenVINO gives every unseeded draw the same seeds and merges draws with equal
    attributes whose shapes are equal (symbolically: a shared dynamic batch suffices), so
    without it every site of a graph drew one mask. The draw itself is not scaled back:
    OpenVINO folds a constant ``Mul`` after a draw into the draw's range
    (``RandomUniformFusion``), which made the twins equal again.
    """
    attrs = {"dtype": TensorProto.FLOAT} | ({} if seed is None else {"seed": float(seed)})
    exponent = (twin - 1) % MAX_TWIN_EXPONENT + 1 if twin else 0
    nodes = []
    if exponent:
        attrs |= {"low": 0.0, "high": float(2**exponent)}
        nodes += [_const("twin_range", float(2**exponent), TensorProto.FLOAT),
                  oh.make_node("Mul", [threshold, "twin_range"], ["twin_threshold"])]
        threshold = "twin_threshold"
    return [*nodes,
            oh.make_node("RandomUniformLike", ["noise_like"], ["uniform"], name=DRAW_NODE,
                         **attrs),
            oh.make_node("GreaterOrEqual", ["uniform", threshold], ["mask"])]


def _output_nodes(data_type: int | None, compute: int) -> list[NodeProto]:
    """``output`` = mask ? data * T(scale) : 0, with T's rounding of the scale
    (``data_c``: the data in the compute type, when that is not T).

    The scale is rounded to T once. When T is not the compute type, the product is
    taken in the compute type and rounded back: the product of two T values is exact
    there (float16/bfloat16 in float, anything in double), so the result is T
    arithmetic bit for bit. It is needed for bfloat16 (onnxruntime's CPU ``Mul`` lacks
    it) and float16 (onnxruntime's InsertCast computes float16 ``Mul`` in float and drops
    the scale's rounding to float16), and for a T unknown when the body is chosen.
    """
    if data_type == compute:
        return [oh.make_node("Mul", ["data", "scale_c"], ["scaled"]),
                oh.make_node("Where", ["mask", "scaled", "zero_c"], ["output"])]

    def to_data(src: str, dst: str) -> NodeProto:
        if data_type is None:
            return oh.make_node("CastLike", [src, "data"], [dst])
        return oh.make_node("Cast", [src], [dst], to=data_type)

    return [to_data("scale_c", "scale_t"),
            oh.make_node("Cast", ["scale_t"], ["scale_tc"], to=compute),
            oh.make_node("Mul", ["data_c", "scale_tc"], ["scaled_c"]),
            oh.make_node("Where", ["mask", "scaled_c", "zero_c"], ["dropped_c"]),
            to_data("dropped_c", "output")]


def _plain_nodes(variant: Variant) -> list[NodeProto]:
    """The body without a branch: the switch folded into arithmetic (for ``inline``)."""
    direct = variant.data_type == variant.compute
    # Not direct: the data in the compute type, for the product (see _output_nodes).
    data_c = [] if direct else [oh.make_node("Cast", ["data"], ["data_c"], to=variant.compute)]
    return [*_switch_nodes(variant.compute), *data_c,
            *_noise_like_nodes(variant.axes, "data" if direct else "data_c"),
            *_draw_nodes(variant.seed, variant.twin, _threshold(variant.compute)),
            *_output_nodes(variant.data_type, variant.compute)]


def _branched_nodes(variant: Variant) -> list[NodeProto]:
    """The same computation with the data's work in ``If(training_mode)``, whose else
    branch is the identity (for onnxruntime and ``ReferenceEvaluator``).

    The plain form runs the full-size product and ``Where`` also with the switch off
    (onnxruntime: ~20 ms where a copy takes 2; docs/function-body.md). The draw stays
    at the top level, over a shape that is empty with the switch off: onnxruntime seeds
    an unseeded random op by its node's index in its graph, and a draw inside each
    node's branch sits at the same index of every branch (every site drew one mask).
    """
    direct = variant.data_type == variant.compute
    data_c = [] if direct else [oh.make_node("Cast", ["data"], ["data_c"], to=variant.compute)]
    if variant.axes == ():  # the noise shape is the data's: no copy of it
        shape_nodes = [oh.make_node("Shape", ["data"], ["noise_dims"])]
    else:
        shape_nodes = [*_noise_like_nodes(variant.axes, "data"),
                       oh.make_node("Shape", ["noise_like"], ["noise_dims"])]
    *draw, decide = _draw_nodes(variant.seed, 0, _threshold(variant.compute))
    gate = [oh.make_node("Cast", ["training_mode"], ["switch_i"], to=_INT64),
            oh.make_node("Mul", ["noise_dims", "switch_i"], ["draw_dims"]),
            oh.make_node("ConstantOfShape", ["draw_dims"], ["draw_zeros"])]
    for node in draw:  # the draw reads the gated zeros
        node.input[:] = ["draw_zeros" if n == "noise_like" else n for n in node.input]
    train = _named([*data_c, decide, *_output_nodes(variant.data_type, variant.compute)])
    renamed = {"output": "train_output", "mask": "train_mask"}
    for node in train:
        node.output[:] = [renamed.get(n, n) for n in node.output]
        node.input[:] = [renamed.get(n, n) for n in node.input]
        node.name = renamed.get(node.name, node.name)
    true = oh.make_tensor("true", TensorProto.BOOL, [1], [True])
    infer = [oh.make_node("Identity", ["data"], ["infer_output"], name="infer_output"),
             oh.make_node("ConstantOfShape", ["noise_dims"], ["all_kept"], name="all_kept",
                          value=true)]
    select = oh.make_node(
        "If", ["training_mode"], ["output", "mask"], name="if_training",
        then_branch=oh.make_graph(train, "train", [], [
            oh.make_value_info("train_output", onnx.TypeProto()),
            oh.make_tensor_value_info("train_mask", TensorProto.BOOL, None)]),
        else_branch=oh.make_graph(infer, "infer", [], [
            oh.make_value_info("infer_output", onnx.TypeProto()),
            oh.make_tensor_value_info("all_kept", TensorProto.BOOL, None)]))
    return [*_switch_nodes(variant.compute), *shape_nodes, *gate, *draw, select]


def build_function(opset: int, variant: Variant = GENERIC, *,
                   branched: bool = False) -> FunctionProto:
    """The SpatialDropout function body of ``variant`` for a model importing
    default-domain ``opset``: every node named, double only where ``variant.compute`` is.

    By default the plain form (what ``inline`` splices in): no ``If``, no subgraph, no
    shape that depends on a value of ``training_mode``. ``branched``: the same training
    computation inside ``If(training_mode)`` with the identity otherwise (what
    ``make_portable`` attaches: onnxruntime then skips the work in inference).
    """
    if opset < MIN_OPSET:
        raise ValueError(
            f"SpatialDropout function bodies need default-domain opset >= {MIN_OPSET}, "
            f"the model imports {opset} (convert it with onnx.version_converter first)"
        )
    nodes = _branched_nodes(variant) if branched else _plain_nodes(variant)
    function = oh.make_function(
        spec.DOMAIN, spec.OP_TYPE, list(spec.INPUTS), list(spec.OUTPUTS), _named(nodes),
        [oh.make_opsetid("", opset)],
        overload=variant.name,
        doc_string="SpatialDropout from standard ops (spatialdrop_onnx.function_body).",
    )
    function.attribute_proto.append(oh.make_attribute(
        spec.ATTR_SHARED_AXES, [DEFAULT_AXES_SENTINEL], attr_type=AttributeProto.INTS))
    return function


# --- Making a model portable ---------------------------------------------------------


def _make_explicit(scope: Scope, facts: TypeFacts, fresh: NameMaker,
                   made: dict[str, int]) -> None:
    """Give every SpatialDropout node all inputs, both outputs and explicit shared_axes.

    The element type of each default input made here is recorded in ``made``.
    """
    nodes = scope.nodes
    position = 0
    while position < len(nodes):
        node = nodes[position]
        if not is_spatial_dropout(node):
            position += 1
            continue
        label = node.name or (node.output[0] if node.output else spec.OP_TYPE)
        if not node.input or not node.input[0]:
            raise spec.SpatialDropoutError(f"node {label!r}: {spec.MISSING_DATA}")
        inputs = list(node.input) + [""] * (3 - len(node.input))
        constants = []
        defaults = [None, (spec.DEFAULT_RATIO, TensorProto.FLOAT),
                    (spec.DEFAULT_TRAINING_MODE, TensorProto.BOOL)]
        for slot in (1, 2):
            if not inputs[slot]:
                value, dtype = defaults[slot]
                inputs[slot] = fresh(f"{label}_{spec.INPUTS[slot]}_default")
                made[inputs[slot]] = dtype
                constants.append(oh.make_node(
                    "Constant", [], [inputs[slot]], name=inputs[slot],
                    value=oh.make_tensor(inputs[slot], dtype, [], [value])))
        del node.input[:]
        node.input.extend(inputs)
        if len(node.output) < 2 or not node.output[1]:
            del node.output[1:]
            node.output.append(fresh(f"{label}_mask_unused"))
        rank = facts.rank_of(scope, inputs[0])
        if get_attr(node, spec.ATTR_SHARED_AXES) is None and rank is not None:
            node.attribute.append(oh.make_attribute(
                spec.ATTR_SHARED_AXES, list(spec.default_shared_axes(rank)),
                attr_type=AttributeProto.INTS))
        shared = get_attr(node, spec.ATTR_SHARED_AXES)
        if shared is not None and rank is not None:
            spec.resolve_shared_axes(rank, list(shared.ints))  # raises if invalid
        for constant in reversed(constants):
            nodes.insert(position, constant)
        position += len(constants) + 1


def _variant_of(node: NodeProto, scope: Scope, facts: TypeFacts,
                made: dict[str, int]) -> Variant:
    """The body a node (made explicit) needs, from what is known of its inputs."""
    def elem_type(name: str) -> int:
        return made.get(name) or facts.elem_type_of(scope, name)

    seed_attr = get_attr(node, spec.ATTR_SEED)
    data_type, compute = choose_arithmetic(elem_type(node.input[0]), elem_type(node.input[1]))
    rank = facts.rank_of(scope, node.input[0])
    shared = get_attr(node, spec.ATTR_SHARED_AXES)
    axes = None
    if rank is not None and shared is not None and list(shared.ints) != [DEFAULT_AXES_SENTINEL]:
        axes = spec.resolve_shared_axes(rank, list(shared.ints))
    return Variant(seed=None if seed_attr is None else int(seed_attr.i),
                   data_type=data_type, compute=compute, axes=axes)


def make_portable(model: onnx.ModelProto | str | os.PathLike, *,
                  types: TypeFacts | None = None,
                  names: NameMaker | None = None) -> onnx.ModelProto:
    """Return a copy of ``model`` where every SpatialDropout node has a function body.

    ``model`` is a ``ModelProto`` or the path of an ONNX file (loaded safely).
    ``types`` may give type facts already known for the model's values (e.g. of
    the model it was rewritten from, with the same scopes); by default they are
    read from the model (inferred only if it does not declare them). ``names`` may
    give the names already in use (a caller that just made the model has them).
    Idempotent. Raises ValueError if the default-domain opset is below
    ``MIN_OPSET`` or a node's ``shared_axes`` is invalid for its data's rank.
    """
    return _with_bodies(_copy_of(model, "make_portable"), for_inlining=False, types=types,
                        names=names)


def bodies_for_inlining(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose SpatialDropout nodes call bodies meant to be inlined.

    It differs from :func:`make_portable` where inlining lifts a runtime's limits:
    nodes inside model-local functions call their own variants too (an inliner
    resolves overloads statically), an absent ``shared_axes`` is written as the
    default's sentinel (``onnx.inliner`` drops an attribute reference the node does
    not set instead of taking the function's default), the bodies are the plain form
    (no ``If``), and the unseeded nodes of one graph draw through distinct nodes (OpenVINO
    merges draws of equal shape and attributes, whatever tensors they read).
    The result is meant for ``onnx.inliner``, not to be run as it is.
    """
    return _with_bodies(_copy_of(model, "bodies_for_inlining"), for_inlining=True)


def _copy_of(model: onnx.ModelProto | str | os.PathLike, caller: str) -> onnx.ModelProto:
    if isinstance(model, (str, os.PathLike)):
        from .modelio import load_model

        model = load_model(model).model
    elif not isinstance(model, onnx.ModelProto):
        raise TypeError(f"{caller} takes an onnx.ModelProto or a path, "
                        f"not {type(model).__name__}")
    result = onnx.ModelProto()
    result.CopyFrom(model)
    return result


def _variant_order(variant: Variant) -> tuple:
    return (variant.seed is not None, variant.seed or 0, variant.name)


def _with_bodies(result: onnx.ModelProto, for_inlining: bool,
                 types: TypeFacts | None = None,
                 names: NameMaker | None = None) -> onnx.ModelProto:
    """Attach the function bodies to ``result`` (changed in place) and return it."""
    scopes = model_scopes(result)
    if not any(is_spatial_dropout(n) for s in scopes for n in s.nodes):
        return result
    facts = type_facts(result) if types is None else types
    fresh = NameMaker(all_names(result)) if names is None else names
    variants: set[Variant] = set()
    for scope in scopes:
        made: dict[str, int] = {}
        _make_explicit(scope, facts, fresh, made)
        # onnxruntime cannot resolve an overload from inside a function: nodes there use the
        # generic body, whose random stream is unseeded. An inliner can.
        generic_only = scope.function is not None and not for_inlining
        twins = 0  # unseeded nodes of this scope so far: each draws through its own node
        for node in scope.nodes:
            if not is_spatial_dropout(node):
                continue
            variant = GENERIC if generic_only else _variant_of(node, scope, facts, made)
            if for_inlining and get_attr(node, spec.ATTR_SHARED_AXES) is None:
                node.attribute.append(oh.make_attribute(
                    spec.ATTR_SHARED_AXES, [DEFAULT_AXES_SENTINEL],
                    attr_type=AttributeProto.INTS))
            if for_inlining and variant.seed is None:
                variant = replace(variant, twin=twins)
                twins += 1
            variants.add(variant)
            node.overload = variant.name

    opset = default_opset(result.opset_import)
    kept = [f for f in result.functions if f.domain != spec.DOMAIN or f.name != spec.OP_TYPE]
    del result.functions[:]
    # The generic function always exists and comes last of ours: it is what ReferenceEvaluator
    # (which ignores overloads, last one wins) and calls from inside functions resolve to.
    # Ours come before the user's functions: ReferenceEvaluator loads a function's callees
    # before it only.
    variants.discard(GENERIC)
    for variant in [*sorted(variants, key=_variant_order), GENERIC]:
        result.functions.append(build_function(opset, variant,
                                               branched=not for_inlining))
    result.functions.extend(kept)
    import_our_domain(result.opset_import)
    for function in result.functions:
        if any(is_spatial_dropout(n) for n in function.node):
            import_our_domain(function.opset_import)
    # Function overloads are an IR 10 feature.
    result.ir_version = max(result.ir_version, 10)
    return result
