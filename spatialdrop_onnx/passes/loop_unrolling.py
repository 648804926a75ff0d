"""Loops written out step by step, for runtimes that run no ``Loop`` (tract).

``inline --unroll-loops`` (:func:`unroll_loops`) replaces a main-graph ``Loop`` by M copies
of its body when that is exactly what the Loop computes:

* its trip count is a constant M (1 <= M <= :data:`MAX_STEPS`, M x body nodes at most
  :data:`MAX_NODES`); tf2onnx writes a Keras RNN's trip count from the sequence length, which
  ``convert`` folds to a constant when the length is declared;
* it runs all M steps: its condition input is absent or constant true, and the body's
  condition output after each of the first M - 1 steps is true. That is proved by
  evaluating it (``onnx.reference``) in the written-out graph, where it may only depend on
  constants, the step numbers and the states they make (tf2onnx's counters);
* its body has no subgraph and draws no random numbers: copies of an unseeded draw are
  twins a runtime may merge (OpenVINO does), a seeded one would repeat its draw each step.
  Keras draws an RNN's dropout masks once, before its loop, so its bodies qualify.

Step i reads the iteration number as a constant i, the previous step's states and
condition, the body's initializers (moved to the main graph once, shared by all steps)
and the outer values as the body did. A scan output is each step's value with a new
axis 0, concatenated (the Loop's own stacking); the final states become the Loop's
outputs. The copies of the condition's nodes are removed once proved. Loops that do not
qualify are left, each named with the reason.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import onnx
from onnx import TensorProto
from onnx import helper as oh

from ..graph import (
    MAX_CONSTANT_ELEMENTS,
    Constants,
    NameMaker,
    all_names,
    constant_tensor,
    default_opset,
    is_default_domain,
    is_onnx_dropout,
    is_random,
    model_scopes,
    names_read,
    subgraphs,
)
from ..headroom import PEAK_FACTOR, ensure_bytes

#: Most steps one Loop is written out to.
MAX_STEPS = 4096
#: Most nodes the copies of all Loops' bodies may add to one model.
MAX_NODES = 200_000
#: The ops a condition may be evaluated through: element-wise and shape-preserving ones, on
#: tensors of at most MAX_CONSTANT_ELEMENTS elements (a condition from a file off the internet
#: must not make the evaluation allocate or loop: no ConstantOfShape, Expand, Range, ...).
CONDITION_OPS = frozenset({
    "Constant", "Identity", "Cast", "Add", "Sub", "Mul", "Div", "Mod", "Neg", "Abs", "Min",
    "Max", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "Equal", "And", "Or", "Not",
    "Xor", "Squeeze", "Unsqueeze", "Where"})


@dataclass(frozen=True)
class UnrolledLoops:
    """What :func:`unroll_loops` wrote out, and what it left."""

    unrolled: tuple[str, ...] = ()  # names of the Loops replaced by their steps
    steps: int = 0  # steps written, all Loops together
    left: tuple[str, ...] = ()  # "<Loop>: <why>" for each Loop still in the model

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Steps:
    """One Loop written out: its nodes, the condition values to prove, the body's initializers
    (renamed, for the main graph)."""

    nodes: list[onnx.NodeProto]
    conditions: list[str]  # the Loop's condition input, then after each of the first M-1 steps
    initializers: list[TensorProto]


def unroll_loops(model: onnx.ModelProto) -> UnrolledLoops:
    """Write out, in place, every main-graph Loop of ``model`` that qualifies (module doc)."""
    fresh = NameMaker(all_names(model))
    constants = Constants(model)
    main = model_scopes(model)[0]
    opset = default_opset(model.opset_import)
    unrolled, left, steps, budget = [], [], 0, MAX_NODES
    for scope in model_scopes(model)[1:]:  # bodies and functions: their Loops stay
        for node in scope.nodes:
            if node.op_type == "Loop":
                left.append(f"{scope.path}/{node.name or node.output[0]}: inside a subgraph or "
                            "function (only main-graph Loops are written out)")
    position = 0
    while position < len(model.graph.node):
        node = model.graph.node[position]
        position += 1
        if node.op_type != "Loop" or not is_default_domain(node.domain):
            continue
        label = node.name or node.output[0]
        body = next(g for _, g in subgraphs(node))
        count = constants.scalar(main, node.input[0]) if node.input and node.input[0] else None
        why = _refusal(node, body, count, budget)
        if why:
            left.append(f"{label}: {why}")
            continue
        assert isinstance(count, int)
        ensure_bytes(PEAK_FACTOR["unroll_loops"] * count * body.ByteSize(), "unroll_loops")
        written = _write_out(node, body, count, opset, fresh)
        graph_before = list(model.graph.node)
        index = position - 1
        try:
            proved = _all_true(model, graph_before[:index], written)
        except Exception as err:  # noqa: BLE001 - unprovable means left, with the reason
            proved = f"its condition could not be evaluated ({type(err).__name__})"
        if proved is not True:
            left.append(f"{label}: {proved}")
            continue
        kept = _without_conditions(written, graph_before[index + 1:], model.graph.output)
        del model.graph.node[:]
        model.graph.node.extend([*graph_before[:index], *kept, *graph_before[index + 1:]])
        model.graph.initializer.extend(written.initializers)
        position = index + len(kept)
        unrolled.append(label)
        steps += count
        budget -= count * len(body.node)
    if unrolled:
        _drop_unread_initializers(model)
    return UnrolledLoops(tuple(unrolled), steps, tuple(left))


def _refusal(loop: onnx.NodeProto, body: onnx.GraphProto, count: object,
             budget: int) -> str | None:
    """Why this Loop cannot be written out (``budget``: nodes still allowed), or None."""
    if isinstance(count, bool) or not isinstance(count, int):
        return "its trip count is not a constant (computed at run time, or absent)"
    if not 1 <= count <= MAX_STEPS:
        return f"its trip count {count} is outside 1..{MAX_STEPS}"
    if count * len(body.node) > budget:
        return (f"{count} steps of {len(body.node)} nodes would take the model past "
                f"{MAX_NODES:,} written-out nodes")
    for inner in body.node:
        if any(True for _ in subgraphs(inner)):
            return f"its body has a node with a subgraph ({inner.op_type})"
        if is_random(inner) or is_onnx_dropout(inner):
            return (f"its body draws random numbers ({inner.op_type}): copies would draw "
                    "alike")
    carried = len(loop.input) - 2
    if len(body.input) != carried + 2 or len(body.output) < carried + 1:
        return "its body's inputs and outputs do not match its states"
    return None


def _write_out(loop: onnx.NodeProto, body: onnx.GraphProto, count: int, opset: int,
               fresh: NameMaker) -> _Steps:
    """``count`` copies of ``body`` chained through the states, and the Loop's outputs."""
    base = loop.name or loop.output[0]
    carried = len(loop.input) - 2
    hoisted = []
    shared: dict[str, str] = {}
    for init in body.initializer:  # once, read by every step
        copy = TensorProto()
        copy.CopyFrom(init)
        copy.name = shared[init.name] = fresh(f"{base}/{init.name}")
        hoisted.append(copy)
    condition = loop.input[1] if len(loop.input) > 1 and loop.input[1] else ""
    nodes: list[onnx.NodeProto] = []
    if not condition:  # an absent condition is true
        condition = fresh(f"{base}/run")
        nodes.append(_constant(condition, np.array(True)))
    conditions = [condition]
    states = list(loop.input[2:])
    scans: list[list[str]] = [[] for _ in body.output[carried + 1:]]
    axis = None
    if opset >= 13 and scans:
        axis = fresh(f"{base}/scan_axis")
        nodes.append(_constant(axis, np.array([0], dtype=np.int64)))
    for step in range(count):
        names = dict(shared)
        iteration = fresh(f"{base}/step{step}/iteration")
        nodes.append(_constant(iteration, np.array(step, dtype=np.int64)))
        names[body.input[0].name] = iteration
        names[body.input[1].name] = condition
        for inner, outer in zip(body.input[2:], states, strict=True):
            names[inner.name] = outer
        for inner in body.node:
            copy = onnx.NodeProto()
            copy.CopyFrom(inner)
            copy.input[:] = [names.get(n, n) if n else n for n in inner.input]
            for k, out in enumerate(inner.output):
                if out:
                    copy.output[k] = names[out] = fresh(f"{base}/step{step}/{out}")
            copy.name = fresh(f"{base}/step{step}/{inner.name or inner.op_type}")
            nodes.append(copy)
        condition = names.get(body.output[0].name, body.output[0].name)
        if step < count - 1:
            conditions.append(condition)
        states = [names.get(o.name, o.name) for o in body.output[1:carried + 1]]
        for k, out in enumerate(body.output[carried + 1:]):
            value, sliced = names.get(out.name, out.name), fresh(f"{base}/step{step}/scan{k}")
            nodes.append(oh.make_node("Unsqueeze", [value, axis], [sliced], name=sliced)
                         if axis else
                         oh.make_node("Unsqueeze", [value], [sliced], name=sliced, axes=[0]))
            scans[k].append(sliced)
    # Trailing outputs of a Loop may be omitted: what is there pairs from the front.
    for out, state in zip(loop.output[:carried], states, strict=False):
        if out:
            nodes.append(oh.make_node("Identity", [state], [out], name=fresh(f"{base}/{out}")))
    for out, parts in zip(loop.output[carried:], scans, strict=False):
        if out:
            nodes.append(oh.make_node("Concat", parts, [out], name=fresh(f"{base}/{out}"),
                                      axis=0))
    return _Steps(nodes, conditions, hoisted)


def _constant(name: str, value: np.ndarray) -> onnx.NodeProto:
    return oh.make_node("Constant", [], [name], name=name,
                        value=onnx.numpy_helper.from_array(value, name))


def _cone(values: list[str], nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """The nodes ``values`` depend on, in graph order."""
    producer = {out: node for node in nodes for out in node.output if out}
    needed, stack = set(), list(values)
    while stack:
        node = producer.get(stack.pop())
        if node is None or id(node) in needed:
            continue
        needed.add(id(node))
        stack.extend(names_read(node))
    return [node for node in nodes if id(node) in needed]


def _cheap(node: onnx.NodeProto) -> bool:
    """A node a condition may be evaluated through: a default-domain op of
    :data:`CONDITION_OPS`, a Constant of at most MAX_CONSTANT_ELEMENTS values."""
    if not is_default_domain(node.domain) or node.op_type not in CONDITION_OPS:
        return False
    return node.op_type != "Constant" or _small(constant_tensor(node))


def _all_true(model: onnx.ModelProto, before: list[onnx.NodeProto],
              written: _Steps) -> bool | str:
    """True when every condition of ``written`` is a constant true, else why not."""
    nodes = [*before, *written.nodes]
    cone = _cone(written.conditions, nodes)
    made = {out for node in cone for out in node.output}
    initializers = {i.name: i for i in [*model.graph.initializer, *written.initializers]}
    inputs = {i.name for i in model.graph.input}
    read = {name for node in cone for name in names_read(node)} | set(written.conditions)
    free = read - made
    if any(name in inputs or name not in initializers for name in free):
        return "its condition depends on the model's inputs (it may end the Loop early)"
    if not all(_cheap(node) for node in cone):
        return ("its condition is computed by other ops than element-wise ones on small "
                "constants (it may end the Loop early)")
    if not all(_small(initializers[name]) for name in free):
        return ("its condition reads a large or external tensor (only small constants are "
                "evaluated)")
    from onnx.reference import ReferenceEvaluator

    # Each condition leaves through an Identity of its own: an output named as an initializer
    # would hide the initializer's shape from shape inference.
    conditions = list(dict.fromkeys(written.conditions))
    leaving = [f"condition {k}" for k in range(len(conditions))]
    probe = oh.make_model(
        oh.make_graph([*cone, *(oh.make_node("Identity", [c], [out])
                                for c, out in zip(conditions, leaving, strict=True))],
                      "condition", [],
                      [oh.make_tensor_value_info(out, TensorProto.BOOL, None) for out in leaving],
                      initializer=[initializers[n] for n in sorted(free)]),
        opset_imports=[o for o in model.opset_import if is_default_domain(o.domain)],
        ir_version=model.ir_version)
    if not _bounded(probe, made | set(leaving)):
        return ("its condition's values could not be shown to stay small (only small "
                "constants are evaluated)")
    values = ReferenceEvaluator(probe).run(None, {})
    if all(np.asarray(v).size == 1 and bool(np.asarray(v).reshape(())) for v in values):
        return True
    return "its condition ends it before its trip count"


def _bounded(probe: onnx.ModelProto, made: set[str]) -> bool:
    """Whether onnx shape inference gives every value of ``probe`` a static shape of at most
    MAX_CONSTANT_ELEMENTS elements: broadcasting small constants can still multiply sizes."""
    try:
        inferred = onnx.shape_inference.infer_shapes(probe, strict_mode=True)
    except (onnx.shape_inference.InferenceError, ValueError):
        return False
    sizes = {}
    for info in [*inferred.graph.value_info, *inferred.graph.output]:
        tensor = info.type.tensor_type
        if not tensor.HasField("shape") or \
                not all(d.HasField("dim_value") for d in tensor.shape.dim):
            continue
        count = 1
        for dim in tensor.shape.dim:
            count *= dim.dim_value
        sizes[info.name] = count
    return all(sizes.get(name, MAX_CONSTANT_ELEMENTS + 1) <= MAX_CONSTANT_ELEMENTS
               for name in made)


def _small(tensor: TensorProto | None) -> bool:
    """A tensor stored in the model with at most MAX_CONSTANT_ELEMENTS elements."""
    if tensor is None or tensor.data_location == TensorProto.EXTERNAL or tensor.external_data:
        return False
    count = 1
    for dim in tensor.dims:
        count *= dim
    return count <= MAX_CONSTANT_ELEMENTS


def _without_conditions(written: _Steps, after: list[onnx.NodeProto],
                        outputs: list[onnx.ValueInfoProto]) -> list[onnx.NodeProto]:
    """``written.nodes`` minus those only the proved conditions read: one pass from the last
    node back (the steps are in graph order), keeping a node when a kept one reads it."""
    live = {name for node in after for name in names_read(node)} | {o.name for o in outputs}
    kept = []
    for node in reversed(written.nodes):
        if any(out in live for out in node.output if out):
            kept.append(node)
            live.update(names_read(node))
    kept.reverse()
    return kept


def _drop_unread_initializers(model: onnx.ModelProto) -> None:
    """Initializers no node reads any more (a Loop's trip count), unless graph inputs."""
    read = {name for scope in model_scopes(model, include_ours=True) for node in scope.nodes
            for name in names_read(node)}
    read |= {i.name for i in model.graph.input} | {o.name for o in model.graph.output}
    kept = [i for i in model.graph.initializer if i.name in read]
    if len(kept) != len(model.graph.initializer):
        del model.graph.initializer[:]
        model.graph.initializer.extend(kept)
