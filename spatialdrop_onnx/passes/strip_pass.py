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
from ..errors import UserError, prefixed_with, printable
from ..function_body import runtime_noise_shape
from ..graph import (
    RANDOM_OPS,
    NameMaker,
    Scope,
    TypeFacts,
    all_names,
    check_opset_imports,
    drop_our_unused_functions,
    drop_unused_training_switch,
    get_attr,
    is_onnx_dropout,
    is_spatial_dropout,
    is_switch_type,
    model_scopes,
    remove_inputs,
    subgraphs,
    type_facts,
)
from ..reports import JsonReport
from ..sites import Site
from .result import ModelArg, PassResult, load_argument


@dataclass(frozen=True)
class StripReport(JsonReport):
    """What strip did: dropout nodes folded, random subgraphs converted first, sites left."""

    folded: int = 0
    random_subgraphs: int = 0
    unconvertible: tuple[Site, ...] = field(default_factory=tuple)

    @property
    def modified(self) -> bool:
        return self.folded > 0


def strip(model: ModelArg) -> PassResult[StripReport]:
    """Fold every dropout of ``model`` (a ModelProto or a path) to the identity.

    The result computes what the model computes with training off; see the
    module docstring. Random-mask sites no rule recognises are left in place and
    listed in ``report.unconvertible``.
    """
    given = load_argument(model, "strip")
    proto, folder = given.model, given.folder
    check_opset_imports(proto)
    result = onnx.ModelProto()
    result.CopyFrom(proto)
    folded, op_types = _fold(result, proto)
    random_subgraphs = 0
    unconvertible: tuple[Site, ...] = ()
    if not RANDOM_OPS.isdisjoint(op_types):
        # Only models with random ops pay for the rule-based passes (onnx_ir).
        from .rewrite_pass import apply_rules

        outcome = apply_rules(result, folder=folder)
        random_subgraphs = len(outcome.converted)
        unconvertible = outcome.unconvertible
        if outcome.model is not None:
            result = outcome.model
            folded += _fold(result, proto)[0]
    return PassResult(given.complete(result),
                      StripReport(folded, random_subgraphs, unconvertible))


def strip_file(src: str | os.PathLike, dst: str | os.PathLike, *,
               in_place: bool = False) -> StripReport:
    """Load ``src`` safely, strip it and save it atomically to ``dst``."""
    from ..modelio import check_output_path, load_model, save_model

    loaded = load_model(src, skeleton=True)  # large tensors are copied when saving
    check_output_path(dst, loaded, in_place)  # refuse before the slow work
    with prefixed_with(src):
        result = strip(loaded)
    save_model(result.model, dst, source=loaded, in_place=in_place)
    return result.report


# --- The fold -----------------------------------------------------------------


class _Lazy:
    """Model-wide facts only some folds need (types for masks, all names for new nodes)."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self._types: TypeFacts | None = None
        self._names: NameMaker | None = None
        #: Masks built: they may make shapes known that the input hid from the checker.
        self.masks_built = 0

    @property
    def types(self) -> TypeFacts:
        if self._types is None:
            self._types = type_facts(self.model)
        return self._types

    @property
    def names(self) -> NameMaker:
        if self._names is None:
            self._names = NameMaker(all_names(self.model))
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
        self.scopes = list(top.descendants())
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
                raise UserError(f"dropout outputs form a cycle at {printable(name)!r}")
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
        self.lazy.masks_built += 1
        shape = fresh(f"{label}/data_shape")
        nodes = [oh.make_node("Shape", [data], [shape], name=fresh(f"{label}/mask_shape"))]
        if kind == "spatial":
            noise, extra = self._noise_shape(node, scope, data, shape, label)
            nodes.extend(extra)
        else:
            noise = shape
        if kind == "onnx" and opset < 10:
            # Dropout-7..9: the mask has the data's type, ones mean "kept".
            elem = self.lazy.types.elem_type_of(scope, data) or TensorProto.FLOAT
            one = oh.make_tensor("one", elem, [1], [1])
        else:
            elem = TensorProto.BOOL
            one = oh.make_tensor("true", TensorProto.BOOL, [1], [True])
        if opset >= 9:
            nodes.append(oh.make_node("ConstantOfShape", [noise], [mask],
                                      name=fresh(f"{label}/all_kept"), value=one))
        elif opset == 8:
            scalar = fresh(f"{label}/one")
            nodes.extend(_constant(scalar, elem, [], [1], opset, fresh))
            nodes.append(oh.make_node("Expand", [scalar], [mask], name=fresh(f"{label}/all_kept")))
            nodes[-1].input.append(noise)
        elif kind == "onnx" and self.lazy.types.rank_of(scope, data) is None:
            # Opset 7, rank unknown: Dropout's mask is data-shaped, and x < x is false
            # for every x (NaN included), so Not(Less(x, x)) is all true in any rank.
            less, kept = fresh(f"{label}/never_less"), fresh(f"{label}/all_true")
            nodes[:] = [oh.make_node("Less", [data, data], [less], name=less),
                        oh.make_node("Not", [less], [kept], name=kept),
                        oh.make_node("Cast", [kept], [mask], name=fresh(f"{label}/all_kept"),
                                     to=elem)]
        else:
            rank = self.lazy.types.rank_of(scope, data)
            if rank is None:
                raise UserError(
                    f"node {printable(label)!r}: its mask output is used but the data rank is "
                    f"unknown (opset {opset} has no ConstantOfShape/Expand)")
            ones = fresh(f"{label}/ones")
            nodes.extend(_constant(ones, elem, [1] * rank, [1], opset, fresh))
            nodes.append(oh.make_node("Tile", [ones, noise], [mask],
                                      name=fresh(f"{label}/all_kept")))
        return nodes

    def _noise_shape(self, node: NodeProto, scope: Scope, data: str, shape: str,
                     label: str) -> tuple[str, list[NodeProto]]:
        """SpatialDropout's mask shape: the data shape with 1 at every shared axis.

        Written with int64 Mul/Add (not Where, which needs opset 9), so it is valid
        at every opset the data shape can be taken at.
        """
        fresh = self.lazy.names
        attr = get_attr(node, spec.ATTR_SHARED_AXES)
        axes = list(attr.ints) if attr is not None else None
        rank = self.lazy.types.rank_of(scope, data)
        noise = fresh(f"{label}/noise_shape")
        if rank is None:
            if scope.opset < 13:
                raise UserError(f"node {printable(label)!r}: its mask output is used, the data "
                                f"rank is unknown and opset {scope.opset} < 13 cannot compute it")
            return noise, runtime_noise_shape(data, noise, axes, fresh)
        try:
            shared = set(spec.resolve_shared_axes(rank, axes))
        except spec.SpatialDropoutError as err:
            raise UserError(f"node {printable(label)!r}: {err}") from None
        keep_name, ones_name, kept = (fresh(f"{label}/not_shared"), fresh(f"{label}/shared"),
                                      fresh(f"{label}/kept_dims"))
        opset = scope.opset
        nodes = [
            *_constant(keep_name, TensorProto.INT64, [rank],
                       [int(i not in shared) for i in range(rank)], opset, fresh),
            *_constant(ones_name, TensorProto.INT64, [rank],
                       [int(i in shared) for i in range(rank)], opset, fresh),
            oh.make_node("Mul", [shape, keep_name], [kept], name=kept),
            oh.make_node("Add", [kept, ones_name], [noise], name=fresh(f"{label}/noise")),
        ]
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
                    any(True for _ in subgraphs(node)):
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
        """Remove unused graph inputs of the switch's type that only fed folded dropouts,
        whatever their name (an exporter's own flag): their default goes with them."""
        remove_inputs(graph, {i.name for i in graph.input if i.name in names
                              and uses[i.name] <= 0 and is_switch_type(i)})

    def _drop_value_info(self, graph: onnx.GraphProto) -> None:
        removed = self.removed_values
        if not removed or not any(v.name in removed for v in graph.value_info):
            return
        kept = [v for v in graph.value_info if v.name not in removed]
        del graph.value_info[:]
        graph.value_info.extend(kept)


_DROPOUT_OPS = frozenset({"Dropout", spec.OP_TYPE})
#: What ``Constant`` can hold below opset 9.
_CONSTANT_1_TYPES = frozenset({TensorProto.FLOAT16, TensorProto.FLOAT, TensorProto.DOUBLE})


def _constant(name: str, dtype: int, dims: list[int], values: list, opset: int,
              fresh: NameMaker) -> list[NodeProto]:
    """Nodes making the constant ``name``: a ``Constant``, or below opset 9 (where
    ``Constant`` holds float types only) a float ``Constant`` cast to ``dtype``."""
    if opset >= 9 or dtype in _CONSTANT_1_TYPES:
        return [oh.make_node("Constant", [], [name], name=name,
                             value=oh.make_tensor(name, dtype, dims, values))]
    as_float = fresh(f"{name}/float")
    return [oh.make_node("Constant", [], [as_float], name=as_float,
                         value=oh.make_tensor(as_float, TensorProto.FLOAT, dims,
                                              [float(v) for v in values])),
            oh.make_node("Cast", [as_float], [name], name=name, to=dtype)]


def _dropout_kind(node: NodeProto) -> str | None:
    if is_onnx_dropout(node):
        return "onnx"
    if is_spatial_dropout(node):
        return "spatial"
    return None


def _fold(model: onnx.ModelProto, source: onnx.ModelProto | None = None
          ) -> tuple[int, set[str]]:
    """Fold in place; return the count and every op type seen (one pass over the nodes).

    With ``source`` (the model before any fold), a fold that built an all-true mask is
    checked: see :func:`_check_masks`.
    """
    lazy = _Lazy(model)
    folded = 0
    op_types: set[str] = set()
    for top in (s for s in model_scopes(model) if s.parent is None):
        folder = _Folder(top, lazy)
        folded += folder.run()
        op_types |= folder.op_types
    if folded:
        drop_unused_training_switch(model)
    if any(o.domain == spec.DOMAIN for o in model.opset_import):
        drop_our_unused_functions(model)
    if lazy.masks_built and source is not None:
        _check_masks(model, source)
    return folded, op_types


def _check_masks(result: onnx.ModelProto, source: onnx.ModelProto) -> None:
    """Refuse a result the full checker rejects although the input passed it.

    A used mask becomes nodes whose shape onnx can infer where the dropout's mask
    (Dropout-7..11) had none, so a declared shape that contradicts what the model
    computes, hidden from the checker before, becomes visible (found by the
    mutation fuzz: ``float[2,3,-1,5] z = Add(mask, x)``). Only folds that built a
    mask pay for the check.
    """
    from ..isolation import checker_complaint

    problem = checker_complaint(result)
    if problem and not checker_complaint(source):
        raise UserError(f"the model declares shapes or types that contradict what it computes, "
                        f"which folding its dropout masks makes visible: {printable(problem)}")
