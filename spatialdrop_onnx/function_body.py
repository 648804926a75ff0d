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
* When the rank is unknown, the function's ``shared_axes`` default is a
  sentinel that the body resolves to axes 2..rank-1 at run time.
* Errors (bad ratio, bad axes for the rank) surface as a failing ``Gather``
  in a node named after the rule it checks.
"""

from __future__ import annotations

import os
from collections import Counter

import onnx
from onnx import AttributeProto, FunctionProto, GraphProto, NodeProto, TensorProto
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


def _ratio_nodes() -> list[NodeProto]:
    """``ratio_d`` (double), ``active`` (training and ratio > 0), with the ratio check."""
    return [
        _const("zero_vec", [0], _INT64),
        _const("zero_d", 0.0, _DOUBLE),
        _const("one_d", 1.0, _DOUBLE),
        oh.make_node("Cast", ["ratio"], ["ratio_raw"], to=_DOUBLE),
        oh.make_node("GreaterOrEqual", ["ratio_raw", "zero_d"], ["ratio_ge0"]),
        oh.make_node("LessOrEqual", ["ratio_raw", "one_d"], ["ratio_le1"]),
        oh.make_node("And", ["ratio_ge0", "ratio_le1"], ["ratio_ok"]),
        *_guard("check_ratio_in_0_1", "ratio_ok", "g_ratio"),
        oh.make_node("Cast", ["g_ratio"], ["g_ratio_d"], to=_DOUBLE),
        oh.make_node("Add", ["ratio_raw", "g_ratio_d"], ["ratio_d"]),
        oh.make_node("Greater", ["ratio_d", "zero_d"], ["ratio_pos"]),
        oh.make_node("And", ["training_mode", "ratio_pos"], ["active"]),
    ]


def _scale_nodes(via_double: bool) -> list[NodeProto]:
    """``train_output`` = keep ? data * T(1/(1-ratio)) : 0, in T's arithmetic.

    The scale is rounded to T once. ``via_double`` multiplies in double and
    rounds back: the product of two T values is exact in double, so the result
    is the same bits, and it works for bfloat16 (onnxruntime's CPU Mul lacks
    it) and for a T unknown when the model is made portable — at the price of
    four extra passes over the data.
    """
    nodes = [oh.make_node("CastLike", ["scale_exact", "data"], ["scale_t"])]
    if not via_double:
        return [*nodes,
                oh.make_node("CastLike", ["zero_d", "data"], ["zero_t"]),
                oh.make_node("Mul", ["data", "scale_t"], ["scaled"]),
                oh.make_node("Where", ["keep", "scaled", "zero_t"], ["train_output"])]
    return [*nodes,
            oh.make_node("Cast", ["scale_t"], ["scale_d"], to=_DOUBLE),
            oh.make_node("Cast", ["data"], ["data_d"], to=_DOUBLE),
            oh.make_node("Mul", ["data_d", "scale_d"], ["scaled_d"]),
            oh.make_node("Where", ["keep", "scaled_d", "zero_d"], ["dropped_d"]),
            oh.make_node("CastLike", ["dropped_d", "data"], ["train_output"])]


def _draw_nodes(seed: int | None, uniform: int = _DOUBLE, offset: int = 0) -> list[NodeProto]:
    """``uniform`` (double, noise-shaped when ``active``, empty otherwise), drawn at the top
    level of the body, not inside the If.

    onnxruntime seeds an unseeded random op with a process-wide seed plus the node's index in
    its graph: inside the If's branch every node's draw sits at the same index of its own
    branch graph, so every SpatialDropout of a model drew the same numbers (equal noise sizes:
    the same mask). At the top level, the draws of a graph's nodes get distinct indices once
    onnxruntime inlines the function. The draw is empty when inactive: inference draws nothing.
    ``uniform`` is the element type of the draws (double, or float for bodies meant to be
    inlined: OpenVINO converts ``RandomUniformLike`` to float only); they are compared with
    the ratio in double either way. A non-zero ``offset`` draws from [offset, offset+1) and
    subtracts it (exact in float for a small offset): the same numbers' distribution from a
    node that differs from its twin, which OpenVINO would otherwise merge with it (it merges
    identical subgraphs, random ones included: two sites on one tensor drew one mask).
    """
    random_attrs = {"dtype": uniform} | ({} if seed is None else {"seed": float(seed)})
    if offset:
        random_attrs |= {"low": float(offset), "high": float(offset + 1)}
    nodes = [
        oh.make_node("Cast", ["active"], ["active_i"], to=_INT64),
        oh.make_node("Mul", ["noise", "active_i"], ["draw_shape"]),
        oh.make_node("ConstantOfShape", ["draw_shape"], ["noise_zeros"]),
    ]
    drawn = "uniform" if uniform == _DOUBLE and not offset else "uniform_t"
    nodes.append(oh.make_node("RandomUniformLike", ["noise_zeros"], [drawn], **random_attrs))
    if offset:
        nodes += [_const("draw_offset", float(offset), uniform),
                  oh.make_node("Sub", [drawn, "draw_offset"], ["uniform_o"])]
        drawn = "uniform_o"
    if drawn != "uniform":
        nodes.append(oh.make_node("Cast", [drawn], ["uniform"], to=_DOUBLE))
    return nodes


def _train_branch(via_double: bool) -> GraphProto:
    """Keep where the draw is at least the ratio, and scale the kept values."""
    nodes = [
        oh.make_node("GreaterOrEqual", ["uniform", "ratio_d"], ["keep"]),
        oh.make_node("Sub", ["one_d", "ratio_d"], ["keep_prob"]),
        oh.make_node("Div", ["one_d", "keep_prob"], ["scale_exact"]),
        *_scale_nodes(via_double),
    ]
    return oh.make_graph(nodes, "train", [], [
        oh.make_value_info("train_output", onnx.TypeProto()),
        oh.make_tensor_value_info("keep", TensorProto.BOOL, None),
    ])


def _infer_branch() -> GraphProto:
    """Training off or ratio 0: output is data, every decision is 'keep'."""
    true_value = oh.make_tensor("true", TensorProto.BOOL, [1], [True])
    nodes = [
        oh.make_node("Identity", ["data"], ["infer_output"]),
        oh.make_node("ConstantOfShape", ["noise"], ["all_kept"], value=true_value),
    ]
    return oh.make_graph(nodes, "infer", [], [
        oh.make_value_info("infer_output", onnx.TypeProto()),
        oh.make_tensor_value_info("all_kept", TensorProto.BOOL, None),
    ])


def overload_name(seed: int | None, via_double: bool, offset: int = 0) -> str:
    """Function overload for a node's variant.

    The overload-free function ('') is the one that works for every node: unseeded, exact for
    every T. It must be, because onnxruntime cannot resolve an overload called from inside
    another function, and ReferenceEvaluator ignores overloads altogether.
    """
    parts = []
    if seed is not None:
        parts.append(f"seed_{seed}" if seed >= 0 else f"seed_m{-seed}")
    if not via_double:
        parts.append("direct")
    if offset:
        parts.append(f"draw{offset}")
    return "_".join(parts)


def build_function(opset: int, seed: int | None = None, via_double: bool = True, *,
                   uniform: int = _DOUBLE, offset: int = 0) -> FunctionProto:
    """The SpatialDropout function body for a model importing default-domain ``opset``.

    ``uniform``, ``offset``: element type and form of the random draws (see ``_draw_nodes``).
    """
    if opset < MIN_OPSET:
        raise ValueError(
            f"SpatialDropout function bodies need default-domain opset >= {MIN_OPSET}, "
            f"the model imports {opset} (convert it with onnx.version_converter first)"
        )
    select = oh.make_node("If", ["active"], ["output", "mask"],
                          then_branch=_train_branch(via_double),
                          else_branch=_infer_branch())
    function = oh.make_function(
        spec.DOMAIN, spec.OP_TYPE, list(spec.INPUTS), list(spec.OUTPUTS),
        [*_ratio_nodes(), *_noise_shape_nodes(_axes_from_attribute()),
         *_draw_nodes(seed, uniform, offset), select],
        [oh.make_opsetid("", opset)],
        overload=overload_name(seed, via_double, offset),
        doc_string="SpatialDropout from standard ops (spatialdrop_onnx.function_body).",
    )
    function.attribute_proto.append(oh.make_attribute(
        spec.ATTR_SHARED_AXES, [DEFAULT_AXES_SENTINEL], attr_type=AttributeProto.INTS))
    return function


# --- Making a model portable ---------------------------------------------------------


#: Data types whose body multiplies directly in T. Not float16: onnxruntime's
#: InsertCast transformer computes float16 Mul/Where in float and drops the
#: scale's rounding to float16, so float16 takes the exact path through double.
_DIRECT_TYPES = frozenset({TensorProto.FLOAT, TensorProto.DOUBLE})


def _make_explicit(scope: Scope, facts: TypeFacts, fresh: NameMaker) -> None:
    """Give every SpatialDropout node all inputs, both outputs and explicit shared_axes."""
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
    nodes inside model-local functions call their seeded and direct variants
    (an inliner resolves overloads statically), an absent ``shared_axes`` is
    written as the default's sentinel (``onnx.inliner`` drops an attribute
    reference the node does not set instead of taking the function's default),
    the draws are float (OpenVINO converts ``RandomUniformLike`` to float only), and
    unseeded nodes of one graph with the same inputs and axes draw through distinct
    nodes (OpenVINO merges identical subgraphs, random ones too).
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


def _with_bodies(result: onnx.ModelProto, for_inlining: bool,
                 types: TypeFacts | None = None,
                 names: NameMaker | None = None) -> onnx.ModelProto:
    """Attach the function bodies to ``result`` (changed in place) and return it."""
    scopes = model_scopes(result)
    if not any(is_spatial_dropout(n) for s in scopes for n in s.nodes):
        return result
    facts = type_facts(result) if types is None else types
    fresh = NameMaker(all_names(result)) if names is None else names
    variants: set[tuple[int | None, bool, int]] = set()  # (seed, via_double, offset)
    for scope in scopes:
        _make_explicit(scope, facts, fresh)
        # onnxruntime cannot resolve an overload from inside a function: nodes there use the
        # generic body, whose random stream is unseeded. An inliner can.
        generic_only = scope.function is not None and not for_inlining
        twins: Counter[tuple] = Counter()  # unseeded nodes of this scope with the same inputs
        for node in scope.nodes:
            if is_spatial_dropout(node):
                if for_inlining and get_attr(node, spec.ATTR_SHARED_AXES) is None:
                    node.attribute.append(oh.make_attribute(
                        spec.ATTR_SHARED_AXES, [DEFAULT_AXES_SENTINEL],
                        attr_type=AttributeProto.INTS))
                seed_attr = get_attr(node, spec.ATTR_SEED)
                seed = None if seed_attr is None or generic_only else int(seed_attr.i)
                elem_type = facts.elem_type_of(scope, node.input[0])
                via_double = generic_only or elem_type not in _DIRECT_TYPES
                offset = 0
                if for_inlining and seed is None:
                    axes = get_attr(node, spec.ATTR_SHARED_AXES)
                    key = (*node.input, tuple(axes.ints) if axes is not None else None)
                    offset, twins[key] = twins[key], twins[key] + 1
                variants.add((seed, via_double, offset))
                node.overload = overload_name(seed, via_double, offset)

    opset = default_opset(result.opset_import)
    kept = [f for f in result.functions if f.domain != spec.DOMAIN or f.name != spec.OP_TYPE]
    del result.functions[:]
    # The generic function always exists and comes last of ours: it is what ReferenceEvaluator
    # (which ignores overloads, last one wins) and calls from inside functions resolve to.
    # Ours come before the user's functions: ReferenceEvaluator loads a function's callees
    # before it only.
    variants.discard((None, True, 0))
    ordered = sorted(variants, key=lambda v: (v[0] is not None, v[0] or 0, v[1], v[2]))
    uniform = TensorProto.FLOAT if for_inlining else _DOUBLE
    for seed, via_double, offset in [*ordered, (None, True, 0)]:
        result.functions.append(build_function(opset, seed, via_double, uniform=uniform,
                                               offset=offset))
    result.functions.extend(kept)
    import_our_domain(result.opset_import)
    for function in result.functions:
        if any(is_spatial_dropout(n) for n in function.node):
            import_our_domain(function.opset_import)
    # Function overloads are an IR 10 feature.
    result.ir_version = max(result.ir_version, 10)
    return result
