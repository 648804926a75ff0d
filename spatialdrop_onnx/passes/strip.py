"""Strip: fold every dropout to the identity, for inference.

Removes ``SpatialDropout`` and ONNX ``Dropout`` in every opset form (ratio as
attribute or input, ``training_mode`` input, ``mask`` output) in the main
graph, in Loop/If/Scan bodies and in model-local functions. Random-mask
dropout subgraphs that were never rewritten (Keras/tf2onnx, PyTorch dynamo,
the generic form) are first turned into dropout nodes by the rewrite rules,
then folded the same way.

Folding a site: consumers of the dropout output read its data input instead;
an output that is a graph (or function) output keeps its name through an
``Identity``; a consumed ``mask`` becomes an all-true tensor of the right
shape. Then what only the removed nodes used goes away: the nodes computing
ratio/training_mode, dead initializers, a ``training_mode`` graph input, our
unused function bodies and our opset import.

The fold works on the protobuf directly, not through onnx_ir: on the
90,000-node benchmark the IR round trip alone takes longer than the whole
strip budget (numbers in docs/passes.md).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from itertools import chain

import onnx
from onnx import NodeProto, TensorProto
from onnx import helper as oh

from .. import spec
from ..errors import UserError
from . import _proto
from ._proto import NameMaker, Scope

#: The switch input the rewrite adds (and threads through model-local functions).
TRAINING_MODE = "training_mode"


@dataclass
class StripReport:
    """What strip did: folded sites, and random sites it could not fold (left in place)."""

    folded: int = 0
    rewritten_random_sites: int = 0
    unconvertible: list[dict] = field(default_factory=list)


def strip(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return a copy of ``model`` with every dropout folded to the identity.

    The result computes what the model computes with training off; see the
    module docstring. Random-mask sites no rule recognises are left in place
    (``strip_with_report`` lists them).
    """
    return strip_with_report(model)[0]


def strip_with_report(model: onnx.ModelProto) -> tuple[onnx.ModelProto, StripReport]:
    """Like :func:`strip`, also returning a :class:`StripReport`."""
    report = StripReport()
    result = onnx.ModelProto()
    result.CopyFrom(model)
    report.folded, op_types = _fold(result)
    if not _proto.RANDOM_OPS.isdisjoint(op_types):
        # Only models with random ops pay for the rule-based passes (onnx_ir).
        from .rewrite import rewrite_sites

        result, sites, unconvertible = rewrite_sites(result, training_default=False)
        report.rewritten_random_sites = len(sites)
        report.unconvertible = unconvertible
        report.folded += _fold(result)[0]
    return result, report


# --- The fold -----------------------------------------------------------------


class _Lazy:
    """Model-wide facts only some folds need (types for masks, all names for new nodes)."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self._types: dict[str, onnx.TypeProto] | None = None
        self._names: NameMaker | None = None

    @property
    def types(self) -> dict[str, onnx.TypeProto]:
        if self._types is None:
            self._types = _inferred_types(self.model)
        return self._types

    @property
    def names(self) -> NameMaker:
        if self._names is None:
            self._names = NameMaker(_proto.all_names(self.model))
        return self._names


class _Folder:
    """Folds the dropouts of one top-level scope (main graph or a function).

    Written for large graphs (see the benchmark): a single pass over the
    nodes renames inputs, drops dropout nodes and collects every input name;
    masks and dead code are handled afterwards from those counts. Scopes are
    visited parents first (an outer value is defined before the node holding
    a subgraph that reads it) and written back children first (writing a
    protobuf node list copies its nodes, subgraphs included).
    """

    def __init__(self, top: Scope, lazy: _Lazy) -> None:
        self.top = top
        self.scopes = list(_proto.flatten(top))
        self.lazy = lazy
        self.rename: dict[str, str] = {}
        self.candidates: Counter = Counter()
        self.removed_values: set[str] = set()
        self.op_types: set[str] = set()
        self.folded = 0

    def _count_uses(self) -> Counter:
        uses: Counter = Counter()
        for scope in self.scopes:
            uses.update(chain.from_iterable(node.input for node in scope.nodes))
            uses.update(scope.output_names)
        return uses

    def run(self) -> int:
        kept_outputs = {name for scope in self.scopes for name in scope.output_names}
        all_inputs: list[str] = []
        masks: list[tuple[int, int, NodeProto, str, str, str]] = []
        new_lists: dict[int, list[NodeProto]] = {}
        for index, scope in enumerate(self.scopes):
            new_nodes = self._fold_scope(index, scope, kept_outputs, all_inputs, masks)
            if new_nodes is not None:
                new_lists[index] = new_nodes
            all_inputs.extend(scope.output_names)
        if not self.folded:
            return 0
        uses = Counter(all_inputs)
        if any(uses[name] for name in self.rename):
            # A reader came before its dropout (unsorted graph): rename everywhere.
            for index, scope in enumerate(self.scopes):
                self._rename_all(new_lists.get(index, scope.nodes))
            uses = None
        for index, position, node, kind, data, mask in reversed(masks):
            if uses is None:
                uses = self._count_uses_in(new_lists)
            if uses[mask]:
                scope = self.scopes[index]
                new_lists[index][position:position] = self._all_true_mask(
                    node, kind, scope, data, mask)
            else:
                self.removed_values.add(mask)
        for index in sorted(new_lists, reverse=True):  # children first
            nodes = self.scopes[index].nodes
            del nodes[:]
            nodes.extend(new_lists[index])
        if uses is None:
            uses = self._count_uses()
        self._remove_dead(uses)
        return self.folded

    def _fold_scope(self, index: int, scope: Scope, kept_outputs: set[str],
                    all_inputs: list[str], masks: list) -> list[NodeProto] | None:
        """Fold one node list; returns the new list, or None when nothing changed."""
        new_nodes: list[NodeProto] = []
        changed = False
        rename = self.rename
        op_types = self.op_types
        for node in scope.nodes:
            op_type = node.op_type
            op_types.add(op_type)
            inputs = list(node.input)
            if rename and not rename.keys().isdisjoint(inputs):
                inputs = [rename.get(name, name) for name in inputs]
                del node.input[:]
                node.input.extend(inputs)
            kind = _dropout_kind(node) if op_type in _DROPOUT_OPS else None
            if kind is None or not inputs or not inputs[0]:
                new_nodes.append(node)
                all_inputs.extend(inputs)
                continue
            changed = True
            self.folded += 1
            data = inputs[0]
            for name in inputs[1:]:
                if name:
                    self.candidates[name] += 1
            outputs = list(node.output)
            if len(outputs) > 1 and outputs[1]:
                masks.append((index, len(new_nodes), node, kind, data, outputs[1]))
                all_inputs.append(data)  # the mask nodes read the data's shape
            if outputs and outputs[0]:
                if outputs[0] in kept_outputs:
                    # A graph/function output keeps its name.
                    new_nodes.append(oh.make_node("Identity", [data], [outputs[0]],
                                                  name=node.name or None))
                    all_inputs.append(data)
                else:
                    rename[outputs[0]] = data
                    self.removed_values.add(outputs[0])
        return new_nodes if changed else None

    def _count_uses_in(self, new_lists: dict[int, list[NodeProto]]) -> Counter:
        uses: Counter = Counter()
        for index, scope in enumerate(self.scopes):
            nodes = new_lists.get(index, scope.nodes)
            uses.update(chain.from_iterable(node.input for node in nodes))
            uses.update(scope.output_names)
        return uses

    def _resolve(self, name: str) -> str:
        seen = 0
        while name in self.rename:
            name = self.rename[name]
            seen += 1
            if seen > len(self.rename):  # a cycle can only come from an invalid model
                raise UserError(f"dropout outputs form a cycle at {name!r}")
        return name

    def _rename_all(self, nodes: list[NodeProto]) -> None:
        keys = self.rename.keys()
        for node in nodes:
            inputs = node.input
            if keys.isdisjoint(inputs):
                continue
            for i, name in enumerate(inputs):
                if name in self.rename:
                    inputs[i] = self._resolve(name)

    # -- mask replacement -----------------------------------------------------

    def _all_true_mask(self, node: NodeProto, kind: str, scope: Scope, data: str,
                       mask: str) -> list[NodeProto]:
        """Nodes computing an all-true (all-one for Dropout-7..9) mask named ``mask``."""
        label = node.name or mask
        opset = scope.opset
        fresh = self.lazy.names
        shape = fresh(f"{label}/data_shape")
        nodes = [oh.make_node("Shape", [data], [shape], name=fresh(f"{label}/mask_shape"))]
        if kind == "spatial":
            noise, extra = self._noise_shape(node, scope, data, shape, label)
            nodes.extend(extra)
        else:
            noise = shape
        if kind == "onnx" and opset < 10:
            # Dropout-7..9: the mask has the data's type, ones mean "kept".
            elem = _proto.elem_type_of(self.lazy.types, data) or TensorProto.FLOAT
            one = oh.make_tensor("one", elem, [1], [1])
        else:
            elem = TensorProto.BOOL
            one = oh.make_tensor("true", TensorProto.BOOL, [1], [True])
        if opset >= 9:
            nodes.append(oh.make_node("ConstantOfShape", [noise], [mask],
                                      name=fresh(f"{label}/all_kept"), value=one))
        elif opset == 8:
            scalar = fresh(f"{label}/one")
            nodes.append(oh.make_node("Constant", [], [scalar], name=scalar,
                                      value=oh.make_tensor(scalar, elem, [], [1])))
            nodes.append(oh.make_node("Expand", [scalar], [mask], name=fresh(f"{label}/all_kept")))
            nodes[-1].input.append(noise)
        else:
            rank = _proto.rank_of(self.lazy.types, data)
            if rank is None:
                raise UserError(
                    f"node {label!r}: its mask output is used but the data rank is unknown "
                    f"(opset {opset} has no ConstantOfShape/Expand)")
            ones = fresh(f"{label}/ones")
            nodes.append(oh.make_node("Constant", [], [ones], name=ones,
                                      value=oh.make_tensor(ones, elem, [1] * rank, [1])))
            nodes.append(oh.make_node("Tile", [ones, noise], [mask],
                                      name=fresh(f"{label}/all_kept")))
        return nodes

    def _noise_shape(self, node: NodeProto, scope: Scope, data: str, shape: str,
                     label: str) -> tuple[str, list[NodeProto]]:
        """SpatialDropout's mask shape: the data shape with 1 at every shared axis."""
        fresh = self.lazy.names
        attr = _proto.get_attr(node, spec.ATTR_SHARED_AXES)
        axes = list(attr.ints) if attr is not None else None
        rank = _proto.rank_of(self.lazy.types, data) if scope.function is None else None
        noise = fresh(f"{label}/noise_shape")
        ones_name = fresh(f"{label}/one_i")
        nodes = [oh.make_node("Constant", [], [ones_name], name=ones_name,
                              value=oh.make_tensor(ones_name, TensorProto.INT64, [], [1]))]
        if rank is not None:
            shared = set(spec.resolve_shared_axes(rank, axes))
            mask_name = fresh(f"{label}/is_shared")
            nodes.append(oh.make_node("Constant", [], [mask_name], name=mask_name,
                                      value=oh.make_tensor(mask_name, TensorProto.BOOL, [rank],
                                                           [i in shared for i in range(rank)])))
            nodes.append(oh.make_node("Where", [mask_name, ones_name, shape], [noise],
                                      name=fresh(f"{label}/noise")))
            return noise, nodes
        if scope.opset < 13:
            raise UserError(f"node {label!r}: its mask output is used, the data rank is "
                            f"unknown and opset {scope.opset} < 13 cannot compute it")
        # Rank unknown: work the shared axes out at run time.
        def const(base: str, dtype: int, dims: list[int], values: list) -> str:
            name = fresh(f"{label}/{base}")
            nodes.append(oh.make_node("Constant", [], [name], name=name,
                                      value=oh.make_tensor(name, dtype, dims, values)))
            return name

        def op(op_type: str, inputs: list[str], **attrs: object) -> str:
            out = fresh(f"{label}/{op_type.lower()}")
            nodes.append(oh.make_node(op_type, inputs, [out], name=out, **attrs))
            return out

        zero = const("zero_i", TensorProto.INT64, [], [0])
        rank_v = op("Size", [shape])
        idx = op("Range", [zero, rank_v, ones_name])
        if axes is None:
            first = const("first_shared", TensorProto.INT64, [], [spec.DEFAULT_FIRST_SHARED_AXIS])
            shared = op("GreaterOrEqual", [idx, first])
        else:
            axes_c = const("axes", TensorProto.INT64, [len(axes)], axes)
            negative = op("Cast", [op("Less", [axes_c, zero])], to=TensorProto.INT64)
            norm = op("Add", [axes_c, op("Mul", [negative, rank_v])])
            col = op("Unsqueeze", [idx, const("axis1", TensorProto.INT64, [1], [1])])
            hits = op("Cast", [op("Equal", [col, norm])], to=TensorProto.INT64)
            if scope.opset >= 18:
                total = op("ReduceMax", [hits, const("red_axis", TensorProto.INT64, [1], [1])],
                           keepdims=0)
            else:
                total = op("ReduceMax", [hits], axes=[1], keepdims=0)
            shared = op("Cast", [total], to=TensorProto.BOOL)
        nodes.append(oh.make_node("Where", [shared, ones_name, shape], [noise],
                                  name=fresh(f"{label}/noise")))
        return noise, nodes

    # -- dead code ------------------------------------------------------------

    def _remove_dead(self, uses: Counter) -> None:
        """Remove what only the folded nodes used: producers, initializers, the flag input."""
        # ``uses`` counts the nodes left after folding, so a candidate at 0 is dead.
        work = [name for name in self.candidates if uses[name] <= 0]
        if not work:
            return
        producers: dict[str, NodeProto] | None = None
        top_graph = self.top.graph
        stored = set() if top_graph is None else (
            {i.name for i in top_graph.initializer} | {i.name for i in top_graph.input})
        dead_nodes: set[int] = set()
        unproduced: set[str] = set()
        while work:
            name = work.pop()
            if uses[name] > 0:
                continue
            if name in stored:
                unproduced.add(name)
                continue
            if producers is None:
                producers = {out: node for scope in self.scopes for node in scope.nodes
                             for out in node.output if out}
            node = producers.get(name)
            if node is None:
                unproduced.add(name)  # an initializer or a graph input
                continue
            if id(node) in dead_nodes or any(uses[o] for o in node.output if o) or \
                    any(True for _ in _proto.subgraphs(node)):
                continue
            dead_nodes.add(id(node))
            self.removed_values.update(o for o in node.output if o)
            for inp in node.input:
                if inp:
                    uses[inp] -= 1
                    work.append(inp)
        if dead_nodes:
            for scope in reversed(self.scopes):  # children first, as in run()
                kept = [n for n in scope.nodes if id(n) not in dead_nodes]
                if len(kept) != len(scope.nodes):
                    del scope.nodes[:]
                    scope.nodes.extend(kept)
        for scope in self.scopes:
            graph = scope.graph
            if graph is None:
                continue
            if unproduced:
                self._drop_initializers(graph, unproduced, uses)
                if scope is self.top:
                    self._drop_flag_inputs(graph, unproduced, uses)
            self._drop_value_info(graph)

    def _drop_initializers(self, graph: onnx.GraphProto, names: set[str], uses: Counter) -> None:
        inputs = {i.name for i in graph.input}
        dead = [i for i in graph.initializer
                if i.name in names and uses[i.name] <= 0 and i.name not in inputs]
        if dead:
            dead_names = {i.name for i in dead}
            kept = [i for i in graph.initializer if i.name not in dead_names]
            del graph.initializer[:]
            graph.initializer.extend(kept)

    def _drop_flag_inputs(self, graph: onnx.GraphProto, names: set[str], uses: Counter) -> None:
        """Remove unused boolean scalar graph inputs that only fed training_mode."""
        def is_flag(info: onnx.ValueInfoProto) -> bool:
            tensor = info.type.tensor_type
            return tensor.elem_type == TensorProto.BOOL and (
                not tensor.HasField("shape") or len(tensor.shape.dim) == 0)

        dead = {i.name for i in graph.input if i.name in names and uses[i.name] <= 0
                and is_flag(i)}
        if not dead:
            return
        kept = [i for i in graph.input if i.name not in dead]
        del graph.input[:]
        graph.input.extend(kept)
        kept_init = [i for i in graph.initializer if i.name not in dead]
        if len(kept_init) != len(graph.initializer):
            del graph.initializer[:]
            graph.initializer.extend(kept_init)

    def _drop_value_info(self, graph: onnx.GraphProto) -> None:
        removed = self.removed_values
        if not removed or not any(v.name in removed for v in graph.value_info):
            return
        kept = [v for v in graph.value_info if v.name not in removed]
        del graph.value_info[:]
        graph.value_info.extend(kept)


def _inferred_types(model: onnx.ModelProto) -> dict[str, onnx.TypeProto]:
    types = _proto.value_types(model)
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - types are a best effort; declared types stay
        return types
    for name, info in _proto.value_types(inferred).items():
        types.setdefault(name, info)
    return types


_DROPOUT_OPS = frozenset({"Dropout", spec.OP_TYPE})


def _dropout_kind(node: NodeProto) -> str | None:
    if _proto.is_onnx_dropout(node):
        return "onnx"
    if _proto.is_spatial_dropout(node):
        return "spatial"
    return None


def fold_dropouts(model: onnx.ModelProto) -> int:
    """Fold every Dropout / SpatialDropout of ``model`` in place; return how many."""
    return _fold(model)[0]


def _fold(model: onnx.ModelProto) -> tuple[int, set[str]]:
    """Fold in place; return the count and every op type seen (one pass over the nodes)."""
    lazy = _Lazy(model)
    folded = 0
    op_types: set[str] = set()
    for top in _proto.model_scopes(model):
        folder = _Folder(top, lazy)
        folded += folder.run()
        op_types |= folder.op_types
    if folded and model.functions:
        _drop_unused_training_inputs(model)
    if any(o.domain == spec.DOMAIN for o in model.opset_import):
        # Recomputed: folding replaced the node lists the scopes hold.
        scopes = _proto.model_scopes(model)
        _remove_unused_functions(model, scopes)
        _remove_unused_domain(model, scopes)
    return folded, op_types


def _drop_unused_training_inputs(model: onnx.ModelProto) -> None:
    """Undo the rewrite's threading of ``training_mode`` once nothing reads it.

    A function whose ``training_mode`` input no node uses loses that input and
    every call its argument (repeated: outer functions may free theirs too);
    then an unused boolean ``training_mode`` graph input goes as well.
    """
    def used_in(top: Scope) -> set[str]:
        return {name for scope in _proto.flatten(top) for node in scope.nodes
                for name in node.input}

    changed = True
    while changed:
        changed = False
        scopes = _proto.model_scopes(model)
        for top in scopes[1:]:
            function = top.function
            assert function is not None
            inputs = list(function.input)
            if TRAINING_MODE not in inputs or TRAINING_MODE in used_in(top):
                continue
            index = inputs.index(TRAINING_MODE)
            del function.input[index]
            key = (function.domain, function.name, function.overload)
            for caller in scopes:
                for scope in _proto.flatten(caller):
                    for node in scope.nodes:
                        if (node.domain, node.op_type, node.overload) == key and \
                                len(node.input) > index:
                            del node.input[index]
            changed = True
    graph = model.graph
    if any(i.name == TRAINING_MODE for i in graph.input) and \
            TRAINING_MODE not in used_in(_proto.model_scopes(model)[0]) and \
            TRAINING_MODE not in {o.name for o in graph.output}:
        kept = [i for i in graph.input if i.name != TRAINING_MODE]
        del graph.input[:]
        graph.input.extend(kept)
        kept_init = [i for i in graph.initializer if i.name != TRAINING_MODE]
        del graph.initializer[:]
        graph.initializer.extend(kept_init)


def _called(scopes: list[Scope]) -> set[tuple[str, str, str]]:
    calls = set()
    for top in scopes:
        for scope in _proto.flatten(top):
            for node in scope.nodes:
                calls.add((node.domain, node.op_type, node.overload))
    return calls


def _remove_unused_functions(model: onnx.ModelProto, scopes: list[Scope]) -> None:
    """Drop our SpatialDropout function bodies once nothing calls them."""
    calls = _called(scopes)
    kept = [f for f in model.functions
            if f.domain != spec.DOMAIN or (f.domain, f.name, f.overload) in calls]
    if len(kept) != len(model.functions):
        del model.functions[:]
        model.functions.extend(kept)


def _remove_unused_domain(model: onnx.ModelProto, scopes: list[Scope]) -> None:
    """Drop our opset import (model and functions) when no node uses the domain."""
    def uses_domain(nodes) -> bool:  # noqa: ANN001
        return any(n.domain == spec.DOMAIN for n in nodes)

    if any(uses_domain(s.nodes) for t in scopes for s in _proto.flatten(t)):
        return
    for owner in [model, *model.functions]:
        kept = [o for o in owner.opset_import if o.domain != spec.DOMAIN]
        if len(kept) != len(owner.opset_import):
            del owner.opset_import[:]
            owner.opset_import.extend(kept)


def strip_path(src: str | os.PathLike, dst: str | os.PathLike) -> StripReport:
    """Load ``src`` safely, strip it and save it atomically to ``dst`` (weights never read)."""
    from ..modelio import load_model, save_model

    loaded = load_model(src)
    result, report = strip_with_report(loaded.model)
    save_model(result, dst, source=loaded)
    return report
