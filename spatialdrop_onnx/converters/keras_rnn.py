"""Keras GRU/LSTM layers as the fused ONNX ``GRU``/``LSTM`` op instead of tf2onnx's ``Loop``.

tf2onnx writes a Keras 3 GRU/LSTM as the unrolled ``Loop`` of TensorFlow's while
loop (its own RNN rewriters do not match Keras 3, except a plain LSTM). Where the
layer allows it, :func:`fuse_keras_rnns` replaces the layer's nodes by the op:

1. **the layer's nodes** are those its TensorFlow name scope holds
   (:mod:`.keras_attribution`); they must hold one ``Loop`` per direction and no
   random op but the input-dropout masks described below;
2. **its input** is the one tensor the nodes read from outside that depends on the
   model's inputs (every other outside read must follow from it or from constants:
   an initial state or a Keras mask read from elsewhere means no fusion);
3. **dropout**: with ``training_mode`` kept, a layer with recurrent dropout keeps its
   loop (the recurrent masks act inside the recurrence). Input dropout of a layer
   without recurrent dropout is one ``[batch, features]`` mask per direction, the
   same at every step (the rewrite made it ``SpatialDropout(ones)``): the op reads
   ``x * mask`` (mask unsqueezed over time), the mask node stays as it is. After
   ``--strip`` no mask is left and every layer can be fused;
4. **the op** is built from the Keras weights (:mod:`.keras_rnn_spec`): one op with
   ``direction`` forward / reverse / bidirectional (two single-direction ops when a
   Bidirectional's directions have masks of their own), then the Keras outputs
   (sequence or last output, merge mode, ``go_backwards`` order) and the states;
5. **check**: the layer's nodes and the fused nodes are each cut out as a model
   (the input and masks fed, random) and run in onnxruntime; every tensor the
   layer's nodes give to the rest of the model must equal one fused tensor
   (``|diff| ≤ 1e-4·max(1, |y|)``), which says which fused tensor replaces it. Only
   then is the model changed: the fused tensor takes the old name, the nodes no
   longer needed are removed, and no loop of the layer may remain.

Anything that does not hold leaves the layer's loop untouched, with the reason in
the :class:`RnnFusion` record the converter reports.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import numpy as np
import onnx
from onnx import GraphProto, NodeProto, TensorProto, helper, numpy_helper

from ..graph import (
    TRAINING_MODE,
    NameMaker,
    ValueType,
    all_names,
    is_random,
    model_scopes,
    names_read,
    subgraphs,
    type_facts,
)
from ..graph.nodes import is_onnx_dropout, is_spatial_dropout
from .keras_attribution import layer_of_node
from .keras_rnn_spec import Direction, RnnSpec, rnn_specs

#: Tolerance of the loop-versus-op check, relative to max(1, |y|).
TOLERANCE = 1e-4
#: Batch and (when Keras leaves it open) time length of the check's random input.
CHECK_BATCH, CHECK_TIME = 3, 7


@dataclass(frozen=True)
class RnnFusion:
    """What became of one Keras GRU/LSTM: the fused op, or why its loop stays."""

    path: str
    layer_class: str
    fused: bool
    detail: str
    """The op (``GRU(forward, linear_before_reset=1)``) or the reason it was not fused."""

    def note(self) -> str:
        """One line for the converter's report."""
        if self.fused:
            return f"{self.path} ({self.layer_class}): fused into the ONNX {self.detail}"
        return f"{self.path} ({self.layer_class}): kept as tf2onnx's Loop: {self.detail}"


class _NotFused(Exception):
    """Why a layer keeps its loop (the message is the reason)."""


def fuse_keras_rnns(model: onnx.ModelProto, keras_model: Any, keras: ModuleType,
                    scopes: Mapping[str, str]) -> list[RnnFusion]:
    """Replace the Loop of every fusible Keras GRU/LSTM of ``model`` by the op (in place).

    ``scopes`` maps TensorFlow name scopes to Keras layer paths (the trace's).
    Returns one record per GRU/LSTM layer (a Bidirectional counts once).
    """
    results = []
    for path, label, spec in rnn_specs(keras_model, keras):
        if isinstance(spec, str):
            results.append(RnnFusion(path, label, False, spec))
            continue
        try:
            detail = _fuse(model, spec, scopes)
        except _NotFused as why:
            results.append(RnnFusion(path, label, False, str(why)))
        else:
            results.append(RnnFusion(path, label, True, detail))
    return results


# --- The layer's nodes ----------------------------------------------------------------------


@dataclass
class _Region:
    """The main-graph nodes of one Keras layer and what they exchange with the rest."""

    indices: list[int]
    loops: list[NodeProto]
    masks: list[NodeProto]
    """SpatialDropout nodes (the rewrite's input-dropout masks)."""
    outputs: list[str] = field(default_factory=list)
    """Values the rest of the model reads from the layer."""


def _inside(path: str | None, layer: str) -> bool:
    return path is not None and (path == layer or path.startswith(f"{layer}/"))


def _all_nodes(graph: GraphProto) -> Iterable[NodeProto]:
    for node in graph.node:
        yield node
        for _, sub in subgraphs(node):
            yield from _all_nodes(sub)


def _layer_nodes(graph: GraphProto, path: str, scopes: Mapping[str, str]) -> list[int]:
    """Indices of the nodes the layer's name scope holds, with the scope-less glue nodes
    tf2onnx adds (a ``Shape``, an ``Expand``) whose outputs only the layer reads."""
    owners = [layer_of_node(node, scopes) for node in graph.node]
    inside = {i for i, owner in enumerate(owners) if _inside(owner, path)}
    if not inside:
        return []
    readers: dict[str, set[int]] = {}
    for i, node in enumerate(graph.node):
        for name in names_read(node):
            readers.setdefault(name, set()).add(i)
    for output in graph.output:
        readers.setdefault(output.name, set()).add(-1)
    for i in range(len(graph.node) - 1, -1, -1):  # readers follow: one backward sweep
        if owners[i] is not None or i in inside:
            continue
        read_by = set().union(*(readers.get(o, set()) for o in graph.node[i].output if o))
        if read_by and read_by <= inside:
            inside.add(i)
    return sorted(inside)


def _region(graph: GraphProto, spec: RnnSpec, scopes: Mapping[str, str]) -> _Region:
    indices = _layer_nodes(graph, spec.path, scopes)
    if not indices:
        raise _NotFused("no ONNX node carries the layer's name scope")
    nodes = [graph.node[i] for i in indices]
    loops = [n for n in nodes if n.op_type in ("Loop", "Scan")]
    if not loops:
        near = {n for node in nodes for n in (*node.input, *node.output)}
        ops = sorted({n.op_type for n in graph.node if n.op_type in ("GRU", "LSTM", "RNN")
                      and near & {*n.input, *n.output}})
        raise _NotFused(f"tf2onnx already wrote the ONNX {ops[0]} op" if ops
                        else "no Loop carries the layer's name scope (tf2onnx fuses a "
                        "plain LSTM itself, into nodes without the layer's scope)")
    if len(loops) != len(spec.directions):
        raise _NotFused(f"{len(loops)} Loop(s) for {len(spec.directions)} direction(s)")
    masks = [n for n in nodes if is_spatial_dropout(n)]
    inner = [n for node in nodes for _, sub in subgraphs(node) for n in _all_nodes(sub)]
    for node in [*nodes, *inner]:
        if is_random(node) or is_onnx_dropout(node) or (is_spatial_dropout(node)
                                                        and node not in masks):
            raise _NotFused(f"a random {node.op_type} acts inside the layer")
    if masks and spec.recurrent_dropout > 0:
        raise _NotFused("its recurrent dropout needs the loop in training mode")
    if masks and (len(masks) != len(spec.directions) or spec.implementation == 1):
        raise _NotFused(f"{len(masks)} dropout mask(s) for {len(spec.directions)} "
                        "direction(s), not one input mask per direction")
    # What the rest of the model reads of the loops' results: the layer's outputs. Other
    # values tf2onnx's merging of equal nodes shares with other layers (shapes of the
    # input, its transpose) stay as they are.
    from_loops = {o for loop in loops for o in loop.output}
    for node in nodes:
        if from_loops.intersection(node.input):
            from_loops.update(node.output)
    inside = set(indices)
    read_outside = {n for i, node in enumerate(graph.node) if i not in inside
                    for n in names_read(node)}
    read_outside.update(o.name for o in graph.output)
    outputs = [o for node in nodes for o in node.output if o in from_loops & read_outside]
    return _Region(indices, loops, masks, outputs)


class _Producers:
    """Main-graph lookups: who makes a value, what is constant, what depends on inputs."""

    def __init__(self, graph: GraphProto) -> None:
        self.graph = graph
        self.by_output = {o: i for i, node in enumerate(graph.node) for o in node.output if o}
        self.initializers = {t.name for t in graph.initializer}
        self.inputs = {i.name for i in graph.input} - self.initializers
        self.inputs.discard(TRAINING_MODE)

    def reaches_input(self, name: str, stop: str | None = None) -> bool:
        """Whether ``name`` depends on a graph input other than through ``stop``."""
        seen: set[str] = set()
        todo = [name]
        while todo:
            current = todo.pop()
            if current in seen or current == stop:
                continue
            seen.add(current)
            if current in self.inputs:
                return True
            index = self.by_output.get(current)
            if index is not None:
                todo.extend(names_read(self.graph.node[index]))
        return False

    def ancestors(self, name: str, limit: int) -> list[str]:
        """``name`` and the values it is computed from, nearest first (at most ``limit``)."""
        found, queue, seen = [], [name], {name}
        while queue and len(found) < limit:
            current = queue.pop(0)
            found.append(current)
            index = self.by_output.get(current)
            if index is None:
                continue
            for parent in names_read(self.graph.node[index]):
                if parent and parent not in seen:
                    seen.add(parent)
                    queue.append(parent)
        return found


#: How far up from the layer's reads :func:`_layer_input` looks for its input sequence.
_INPUT_SEARCH = 200


def _layer_input(model: onnx.ModelProto, spec: RnnSpec, region: _Region,
                 producers: _Producers) -> str:
    """The one tensor the layer's outputs are computed from (see the module docstring).

    The nodes computing the outputs read some values from outside the layer (tf2onnx
    shares equal nodes between layers: the input's shape, its transpose); the input is
    the nearest value every such read that depends on the model's inputs follows from,
    shaped (batch, time, features) as the Keras input is.
    """
    graph = model.graph
    made = {o: i for i in region.indices for o in graph.node[i].output if o}
    used: set[int] = set()
    todo = list(region.outputs)
    reads: set[str] = set()
    while todo:
        name = todo.pop()
        index = made.get(name)
        if index is None:
            reads.add(name)
        elif index not in used:
            used.add(index)
            todo.extend(names_read(graph.node[index]))
    live = sorted(n for n in reads if n and n not in producers.initializers
                  and producers.reaches_input(n))
    if not live:
        raise _NotFused("its outputs do not depend on the model's inputs")
    facts, main = type_facts(model), model_scopes(model)[0]
    for candidate in producers.ancestors(live[0], _INPUT_SEARCH):
        if candidate in producers.initializers or not _batch_major(
                facts.type_of(main, candidate), spec):
            continue
        if not any(producers.reaches_input(n, stop=candidate) for n in live):
            return candidate
    raise _NotFused("no single (batch, time, features) tensor feeds it: it reads "
                    f"{len(live)} value(s) that depend on the model's inputs (an initial "
                    "state or a Keras mask?)")


def _batch_major(found: ValueType | None, spec: RnnSpec) -> bool:
    """Whether a value's type can be the Keras input: float, (batch, time, features)."""
    if found is None or found.dims is None or found.elem_type != TensorProto.FLOAT:
        return False
    dims = found.dims  # unknown dims (None, tf2onnx's "unk__3") fit; the check decides
    return (len(dims) == 3 and not isinstance(dims[0], int)
            and (not isinstance(dims[1], int) or dims[1] == spec.time_steps)
            and (not isinstance(dims[2], int) or dims[2] == spec.features))


def _mask_of_direction(graph: GraphProto, spec: RnnSpec, region: _Region) -> list[str]:
    """The input-dropout mask of each direction: the mask the loop reading its kernel reads."""
    if not region.masks:
        return []
    if len(region.masks) == 1:
        return [region.masks[0].output[0]]
    weights = {t.name: t for t in graph.initializer}
    masks = {m.output[0] for m in region.masks}
    chosen: list[str] = []
    for direction in spec.directions:
        for loop in region.loops:
            read = names_read(loop)
            if any(_same(weights.get(name), direction.kernel) for name in read):
                chosen += [name for name in read if name in masks]
                break
    if len(set(chosen)) != len(spec.directions):
        raise _NotFused("cannot tell which dropout mask belongs to which direction (no loop "
                        "reads exactly one direction's kernel and one mask)")
    return chosen


def _same(tensor: TensorProto | None, kernel: np.ndarray) -> bool:
    if tensor is None or tuple(tensor.dims) != kernel.shape:
        return False
    return bool(np.array_equal(numpy_helper.to_array(tensor), kernel))


# --- The fused nodes ------------------------------------------------------------------------


@dataclass
class _Fused:
    """Fused nodes and weights, and the tensors they offer (Keras outputs first)."""

    nodes: list[NodeProto] = field(default_factory=list)
    initializers: list[TensorProto] = field(default_factory=list)
    candidates: list[str] = field(default_factory=list)


class _Builder:
    """Writes the op and the Keras outputs around it, with names fresh in the model."""

    def __init__(self, spec: RnnSpec, fresh: NameMaker) -> None:
        self.spec = spec
        self.fresh = fresh
        self.out = _Fused()

    def node(self, op: str, inputs: list[str], label: str, outputs: int = 1,
             **attrs: Any) -> list[str]:
        base = f"{self.spec.path}/fused/{label}"
        names = [self.fresh(f"{base}:{k}") for k in range(outputs)]
        self.out.nodes.append(helper.make_node(op, inputs, names, name=self.fresh(base),
                                               **attrs))
        return names

    def constant(self, value: np.ndarray, label: str) -> str:
        name = self.fresh(f"{self.spec.path}/fused/{label}")
        self.out.initializers.append(numpy_helper.from_array(value, name))
        return name

    def op(self, x: str, directions: tuple[Direction, ...]) -> tuple[str, str, str | None]:
        """One GRU/LSTM over ``x`` ([time, batch, features]): Y, Y_h, Y_c (LSTM)."""
        spec = self.spec
        w, r, b = spec.weights(directions)
        bias = self.constant(b, "B") if b is not None else ""
        # Zero initial states written out: tract sizes the implicit ones from the batch
        # dimension and stops at a symbolic one.
        batch = self.node("Shape", [x], "batch", start=1, end=2)[0]
        shape = self.node("Concat", [self.constant(np.array([len(directions)]), "directions"),
                                     batch, self.constant(np.array([spec.units]), "units")],
                          "state_shape", axis=0)[0]
        zeros = self.node("ConstantOfShape", [shape], "initial_state",
                          value=numpy_helper.from_array(np.zeros(1, np.float32)))[0]
        states = [zeros, zeros] if spec.op_type == "LSTM" else [zeros]
        inputs = [x, self.constant(w, "W"), self.constant(r, "R"), bias, "", *states]
        if len(directions) == 2:
            direction = "bidirectional"
        else:
            direction = "reverse" if directions[0].backwards else "forward"
        attrs: dict[str, Any] = {"hidden_size": spec.units, "direction": direction,
                                 "activations": spec.activations() * len(directions)}
        if spec.op_type == "GRU":
            attrs["linear_before_reset"] = int(spec.reset_after)
        count = 3 if spec.op_type == "LSTM" else 2
        outputs = self.node(spec.op_type, inputs, spec.op_type, count, **attrs)
        return outputs[0], outputs[1], outputs[2] if count == 3 else None

    def pick(self, value: str, index: int, axis: int, label: str) -> str:
        return self.node("Gather", [value, self.constant(np.array(index, np.int64), "index")],
                         label, axis=axis)[0]

    def build(self, x: str, masks: list[str]) -> _Fused:
        """The op(s) on ``x`` ([batch, time, features]), masked per direction if ``masks``."""
        spec = self.spec
        per_direction: list[tuple[str, str, str | None, int]] = []  # Y, Y_h, Y_c, index
        if masks:
            for direction, mask in zip(spec.directions, masks, strict=True):
                over_time = self.node("Unsqueeze", [mask, self.constant(np.array([1]), "axis")],
                                      "input_dropout_mask")[0]
                masked = self.node("Mul", [x, over_time], "input_dropout")[0]
                y, h, c = self.op(self.time_major(masked), (direction,))
                per_direction.append((y, h, c, 0))
        else:
            y, h, c = self.op(self.time_major(x), spec.directions)
            per_direction = [(y, h, c, k) for k in range(len(spec.directions))]
        sequences, states = [], []
        for y, h, c, k in per_direction:
            step = self.pick(y, k, 1, "sequence")  # [time, batch, units], in input order
            sequences.append(self.node("Transpose", [step], "sequence", perm=[1, 0, 2])[0])
            states.append([self.pick(h, k, 0, "state_h")]
                          + ([self.pick(c, k, 0, "state_c")] if c else []))
        outputs = self.keras_outputs(sequences, [s[0] for s in states])
        # tf2onnx's layout optimiser may move the layer's last Transpose past its end:
        # sequence outputs are offered time-major too.
        time_major = [self.time_major(name) for name in outputs
                      if spec.return_sequences]
        self.out.candidates = outputs + [name for s in states for name in s] + time_major
        return self.out

    def time_major(self, x: str) -> str:
        return self.node("Transpose", [x], "time_major", perm=[1, 0, 2])[0]

    def keras_outputs(self, sequences: list[str], last: list[str]) -> list[str]:
        """The layer's Keras output(s): sequences or last outputs, merged or flipped."""
        spec = self.spec
        if not spec.return_sequences:
            per = last
        elif spec.bidirectional or not spec.directions[0].backwards:
            per = sequences
        else:  # go_backwards: Keras returns the outputs in the order it ran them
            per = [self.node("Slice", [sequences[0], self.constant(np.array([-1]), "start"),
                                       self.constant(np.array([np.iinfo(np.int64).min]), "end"),
                                       self.constant(np.array([1]), "axis"),
                                       self.constant(np.array([-1]), "step")],
                             "reversed")[0]]
        if not spec.bidirectional or spec.merge_mode is None:
            return per
        mode = spec.merge_mode
        if mode == "concat":
            return self.node("Concat", per, "merge", axis=-1)
        if mode == "sum":
            return self.node("Add", per, "merge")
        if mode == "mul":
            return self.node("Mul", per, "merge")
        total = self.node("Add", per, "merge")[0]  # ave
        return self.node("Mul", [total, self.constant(np.array(0.5, np.float32), "half")],
                         "merge")


# --- The check -------------------------------------------------------------------------------


def _cut_model(model: onnx.ModelProto, nodes: list[NodeProto], initializers: list[TensorProto],
               fed: dict[str, list[int | None]], outputs: list[str]) -> onnx.ModelProto:
    """A model of ``nodes`` (in order) computing ``outputs`` from the ``fed`` float inputs."""
    graph = helper.make_graph(
        nodes, "cut",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)
         for name, dims in fed.items()],
        [onnx.ValueInfoProto(name=name) for name in outputs], initializers)
    return helper.make_model(graph, opset_imports=model.opset_import,
                             ir_version=model.ir_version, functions=model.functions)


def _needed(graph: GraphProto, producers: _Producers, outputs: list[str], fed: set[str]
            ) -> tuple[list[NodeProto], list[TensorProto], bool]:
    """The nodes (in graph order) and initializers ``outputs`` need, stopping at ``fed``;
    and whether ``training_mode`` is read."""
    keep: set[int] = set()
    weights: set[str] = set()
    switch = False
    todo, seen = list(outputs), set()
    while todo:
        name = todo.pop()
        if name in seen or name in fed or not name:
            continue
        seen.add(name)
        if name in producers.initializers:
            weights.add(name)
            switch |= name == TRAINING_MODE
        elif name in producers.inputs:
            raise _NotFused(f"its output depends on the model input '{name}' directly")
        elif name in producers.by_output:
            index = producers.by_output[name]
            if index not in keep:
                keep.add(index)
                todo.extend(names_read(graph.node[index]))
        elif name == TRAINING_MODE:
            switch = True
    tensors = [t for t in graph.initializer if t.name in weights and t.name != TRAINING_MODE]
    return [graph.node[i] for i in sorted(keep)], tensors, switch


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    wanted = {i.name for i in session.get_inputs()}
    return session.run(None, {k: v for k, v in feeds.items() if k in wanted})


def _match(model: onnx.ModelProto, producers: _Producers, spec: RnnSpec, region: _Region,
           x: str, masks: list[str], fused: _Fused) -> dict[str, str]:
    """Which fused tensor equals each layer output: region and fused nodes run on one input."""
    graph = model.graph
    time = spec.time_steps or CHECK_TIME
    rng = np.random.default_rng(0)
    feeds: dict[str, np.ndarray] = {
        x: rng.standard_normal((CHECK_BATCH, time, spec.features)).astype(np.float32)}
    for mask in masks:  # kept or dropped features, scaled: as a mask in training mode
        feeds[mask] = (rng.random((CHECK_BATCH, spec.features)) > 0.3).astype(np.float32) / 0.7
    fed: dict[str, list[int | None]] = {x: [None, time, spec.features]}
    fed.update({mask: [None, spec.features] for mask in masks})
    nodes, tensors, switch = _needed(graph, producers, region.outputs, set(fed))
    loop_model = _cut_model(model, nodes, tensors, fed, region.outputs)
    if switch:
        loop_model.graph.input.append(helper.make_tensor_value_info(
            TRAINING_MODE, TensorProto.BOOL, []))
        feeds[TRAINING_MODE] = np.array(False)
    op_model = _cut_model(model, fused.nodes, fused.initializers, fed, fused.candidates)
    try:
        want = _run(loop_model, feeds)
        have = _run(op_model, feeds)
    except Exception as err:  # noqa: BLE001 - onnxruntime raises its own types
        raise _NotFused(f"the check did not run ({err.__class__.__name__}: "
                        f"{str(err).splitlines()[0][:200]})") from None
    chosen: dict[str, str] = {}
    for name, value in zip(region.outputs, want, strict=True):
        bound = TOLERANCE * max(1.0, float(np.max(np.abs(value), initial=0.0)))
        match = next((candidate for candidate, got in zip(fused.candidates, have, strict=True)
                      if got.shape == value.shape
                      and float(np.max(np.abs(got - value), initial=0.0)) <= bound), None)
        if match is None:
            raise _NotFused(f"no tensor of the fused op equals the layer's output '{name}' "
                            f"(shape {value.shape})")
        chosen[name] = match
    return chosen


# --- Changing the model ------------------------------------------------------------------------


def _fuse(model: onnx.ModelProto, spec: RnnSpec, scopes: Mapping[str, str]) -> str:
    """Replace the layer's loop by the op in ``model`` (in place); the op as reported."""
    graph = model.graph
    region = _region(graph, spec, scopes)
    producers = _Producers(graph)
    x = _layer_input(model, spec, region, producers)
    masks = _mask_of_direction(graph, spec, region)
    fused = _Builder(spec, NameMaker(all_names(model))).build(x, masks)
    chosen = _match(model, producers, spec, region, x, masks, fused)
    changed = GraphProto()
    changed.CopyFrom(graph)
    _splice(changed, region, fused, chosen)
    loops = {loop.output[0] for loop in region.loops}
    if any(node.output[0] in loops for node in changed.node if node.output):
        raise _NotFused("the rest of the model still reads values of its loop")
    graph.CopyFrom(changed)
    if masks and spec.bidirectional:
        return (f"{spec.op_type} op, one per direction (forward, reverse), each direction's "
                "input dropout mask applied before it")
    if masks:
        return f"{spec.describe()} op, its input dropout mask applied before it"
    return f"{spec.describe()} op"


def _key(node: NodeProto) -> tuple[str, ...]:
    """A node's identity across copies: its output names (unique in a graph), or its name."""
    return tuple(node.output) or (node.name,)


def _splice(graph: GraphProto, region: _Region, fused: _Fused,
            chosen: dict[str, str]) -> None:
    """Fused nodes in, the layer's outputs taken over by name, nodes no longer read out."""
    dead_before = {_key(n) for n in _dead_nodes(graph)}
    read_before = _read_names(graph)
    retired = {name: f"{name}__loop" for name in chosen}
    for i in region.indices:  # the old producers give up the names the model reads
        node = graph.node[i]
        node.input[:] = [retired.get(n, n) for n in node.input]
        node.output[:] = [retired.get(n, n) for n in node.output]
    taken: dict[str, str] = {}  # fused tensor -> the first layer output it now is
    extra: list[NodeProto] = []
    for name, candidate in chosen.items():
        if candidate in taken:
            extra.append(helper.make_node("Identity", [taken[candidate]], [name],
                                          name=f"{name}__fused"))
        else:
            taken[candidate] = name
    for node in fused.nodes:
        node.output[:] = [taken.get(n, n) for n in node.output]
        node.input[:] = [taken.get(n, n) for n in node.input]
    nodes = [*graph.node, *fused.nodes, *extra]
    graph.initializer.extend(fused.initializers)
    dead = {_key(n) for n in _dead_nodes_of(nodes, graph)} - dead_before
    _set_nodes(graph, _topological([n for n in nodes if _key(n) not in dead]))
    read = _read_names(graph)
    ours = {t.name for t in fused.initializers}
    kept = [t for t in graph.initializer
            if t.name in read or (t.name not in read_before and t.name not in ours)]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    made = {o for node in graph.node for o in node.output} | {i.name for i in graph.input}
    infos = [v for v in graph.value_info if v.name in made]
    del graph.value_info[:]
    graph.value_info.extend(infos)


def _set_nodes(graph: GraphProto, nodes: list[NodeProto]) -> None:
    copies = [NodeProto() for _ in nodes]
    for copy, node in zip(copies, nodes, strict=True):
        copy.CopyFrom(node)
    del graph.node[:]
    graph.node.extend(copies)


def _read_names(graph: GraphProto) -> set[str]:
    read = {n for node in graph.node for n in names_read(node)}
    read.update(o.name for o in graph.output)
    return read


def _dead_nodes(graph: GraphProto) -> list[NodeProto]:
    return _dead_nodes_of(list(graph.node), graph)


def _dead_nodes_of(nodes: list[NodeProto], graph: GraphProto) -> list[NodeProto]:
    """The nodes among ``nodes`` whose outputs nothing reads, transitively."""
    readers: dict[str, int] = {}
    for node in nodes:
        for name in names_read(node):
            readers[name] = readers.get(name, 0) + 1
    for output in graph.output:
        readers[output.name] = readers.get(output.name, 0) + 1
    maker = {o: i for i, node in enumerate(nodes) for o in node.output if o}
    dead: set[int] = set()
    todo = list(range(len(nodes)))
    while todo:
        i = todo.pop()
        if i in dead or any(readers.get(o, 0) for o in nodes[i].output if o):
            continue
        dead.add(i)
        for name in names_read(nodes[i]):  # one reader less: its maker may be dead now
            readers[name] -= 1
            if readers[name] == 0 and name in maker:
                todo.append(maker[name])
    return [nodes[i] for i in sorted(dead)]


def _topological(nodes: list[NodeProto]) -> list[NodeProto]:
    """``nodes`` in an order where every node follows the makers of what it reads
    (stable: the given order wherever it already holds)."""
    maker = {o: i for i, node in enumerate(nodes) for o in node.output if o}
    waiting = [0] * len(nodes)
    followers: list[list[int]] = [[] for _ in nodes]
    for i, node in enumerate(nodes):
        for name in set(names_read(node)):
            j = maker.get(name)
            if j is not None and j != i:
                waiting[i] += 1
                followers[j].append(i)
    ready = [i for i, count in enumerate(waiting) if count == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for k in followers[i]:
            waiting[k] -= 1
            if waiting[k] == 0:
                heapq.heappush(ready, k)
    if len(order) != len(nodes):
        raise _NotFused("the fused graph would have a cycle")
    return [nodes[i] for i in order]
