"""Can the samples be folded into the batch? A yes needs proof from the graph's shapes.

Folding runs the model once on every input repeated N times along axis 0 and
reads sample s of row b at row ``s*B + b``. That is N independent stochastic
passes only if every random draw is made per row and rows do not mix. What is
checked:

* every input is batched (axis 0 is one dynamic dim shared by all of them) or a
  scalar (shared by all samples); a fixed batch size, or inputs whose axis 0
  differ, are refused: the graph may have the size baked into a shape;
* with the batch dim renamed to a symbol of its own, onnxruntime's symbolic
  shape inference (sympy; it follows the batch through ``Shape``/``Slice``/
  ``Concat`` arithmetic and Loop bodies, which onnx's own inference loses) must
  give that symbol at axis 0 of every sampled output and of the data of every
  draw: each training SpatialDropout (standing in as an Identity) and each
  ``*Like`` random op;
* no SpatialDropout shares its decision along axis 0 (``shared_axes`` with 0,
  e.g. DropPath in "batch" mode); no random op draws a fixed shape; no
  BatchNormalization computes batch statistics (``training_mode=1``).

It runs on a copy with the user's functions inlined, large initializers left
out, in a forked child (inference can abort on malformed models, and the
symbolic inference writes a file into the working directory when it gives up).
Anything inference cannot tell counts as a no: the loop strategy is right for
every model. Shape equality is evidence, not proof, that rows do not mix (a
model that computes batch statistics by hand still passes): such models need
``strategy="loop"``.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import onnx
from onnx import helper as oh

from ... import spec
from ...errors import UserError, printable
from ...graph import (
    RANDOM_OPS,
    Constants,
    Scope,
    TypeFacts,
    declared_types,
    get_attr,
    input_at,
    is_spatial_dropout,
    model_scopes,
    skeleton_in_place,
    subgraphs,
)
from ...isolation import run_isolated
from .source import PreparedSource

#: The symbol the batch dim gets in the analysed copy (unlike any name a model uses).
BATCH_SYMBOL = "__spatialdrop_mc_batch__"
#: Random ops whose draw takes the shape of their (first) input.
_LIKE_OPS = frozenset({"RandomUniformLike", "RandomNormalLike", "Bernoulli", "Multinomial"})


@dataclass(frozen=True)
class FoldCheck:
    """The verdict: ``foldable``, the reason in one sentence, the batched inputs and (when
    foldable) every main-graph value whose axis 0 is the batch, with its rank."""

    foldable: bool
    reason: str
    batched_inputs: tuple[str, ...] = ()
    batched: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class _Draw:
    """A node that draws, found before the analysis copy is inferred."""

    scope_index: int
    data: str  # the tensor whose axis 0 must be the batch
    label: str
    shared_axes: tuple[int, ...] = ()  # a SpatialDropout's (the default never holds axis 0)


def _dim0(info: onnx.ValueInfoProto) -> tuple[str, object]:
    """('scalar' | 'unknown' | 'fixed' | 'param' | 'anonymous', value) for an input's axis 0."""
    tensor = info.type.tensor_type
    if not info.type.HasField("tensor_type") or not tensor.HasField("shape"):
        return "unknown", None
    if len(tensor.shape.dim) == 0:
        return "scalar", None
    dim = tensor.shape.dim[0]
    if dim.HasField("dim_value"):
        return "fixed", int(dim.dim_value)
    if dim.HasField("dim_param") and dim.dim_param:
        return "param", dim.dim_param
    return "anonymous", None


def _batched_inputs(inputs: list[onnx.ValueInfoProto]) -> FoldCheck:
    batched: list[str] = []
    params: set[object] = set()
    for info in inputs:
        kind, value = _dim0(info)
        name = printable(info.name)
        if kind == "scalar":
            continue
        if kind == "unknown":
            return FoldCheck(False, f"input {name} has no declared shape, so no known batch axis")
        if kind == "fixed":
            return FoldCheck(False, f"input {name} has a fixed size {value} at axis 0, not a "
                                    "dynamic batch axis to fold the samples into (an "
                                    "unbatched input, or a batch size the graph may have baked "
                                    "into a shape)")
        params.add(value if kind == "param" else ("anonymous", info.name))
        batched.append(info.name)
    if not batched:
        return FoldCheck(False, "no input has a batch axis")
    if len(params) > 1:
        return FoldCheck(False, "the inputs do not share one named batch dim at axis 0 "
                                f"({', '.join(printable(i) for i in batched)})")
    return FoldCheck(True, "", tuple(batched))


def _declared_ranks(graph: onnx.GraphProto, ranks: dict[str, int]) -> dict[str, int]:
    """Declared ranks of the values of ``graph`` and its subgraphs (names are unique)."""
    for info in (*graph.input, *graph.output, *graph.value_info):
        tensor = info.type.tensor_type
        if info.type.HasField("tensor_type") and tensor.HasField("shape"):
            ranks[info.name] = len(tensor.shape.dim)
    for node in graph.node:
        for _, sub in subgraphs(node):
            _declared_ranks(sub, ranks)
    return ranks


def _analysis_copy(prepared: PreparedSource, batched: tuple[str, ...]
                   ) -> tuple[onnx.ModelProto, dict[str, int]]:
    """The prepared model with the user's functions inlined, our bodies dropped, the batch
    dim renamed and no declared inner shapes; and the ranks it declared."""
    model = onnx.ModelProto()
    model.CopyFrom(prepared.model)
    kept = [f for f in model.functions if f.domain != spec.DOMAIN]
    del model.functions[:]
    model.functions.extend(kept)
    if model.functions:
        model = onnx.ModelProto.FromString(
            run_isolated(_inline_all, model, what="inlining functions"))
    graph = model.graph
    for info in graph.input:
        if info.name in batched:
            dim = info.type.tensor_type.shape.dim[0]
            dim.Clear()
            dim.dim_param = BATCH_SYMBOL
    ranks = _declared_ranks(graph, {})
    for info in graph.output:
        info.type.tensor_type.ClearField("shape")
    _clear_value_info(graph)
    return model, ranks


def _inline_all(model: onnx.ModelProto) -> bytes:
    import onnx.inliner

    return onnx.inliner.inline_local_functions(model).SerializeToString()


def _clear_value_info(graph: onnx.GraphProto) -> None:
    del graph.value_info[:]
    for node in graph.node:
        for _, sub in subgraphs(node):
            _clear_value_info(sub)


def _label(node: onnx.NodeProto, scope: Scope) -> str:
    return f"{node.op_type} {printable(node.name or node.output[0])} ({printable(scope.path)})"


def _names_read(model: onnx.ModelProto) -> set[str]:
    """Every name a node reads or a graph outputs, in any scope."""
    read: set[str] = set()
    for scope in model_scopes(model):
        read.update(scope.output_names)
        for node in scope.nodes:
            read.update(node.input)
    return read


def _noise_shaped_mask(node: onnx.NodeProto, axes: tuple[int, ...], mask: str
                       ) -> list[onnx.NodeProto]:
    """Nodes giving ``mask`` the noise shape of ``node``'s data (1 at each shared axis):
    ``Slice`` [0, 1) along those axes, whose constant arguments symbolic inference reads."""
    data = node.input[0]
    if not axes:
        return [oh.make_node("Cast", [data], [mask], to=onnx.TensorProto.BOOL)]
    names = {k: f"{mask}/mc_noise_{k}" for k in ("starts", "ends", "axes", "slice")}
    values = {"starts": [0] * len(axes), "ends": [1] * len(axes), "axes": list(axes)}
    constants = [oh.make_node("Constant", [], [names[k]], value=oh.make_tensor(
        names[k], onnx.TensorProto.INT64, [len(axes)], v)) for k, v in values.items()]
    return [*constants,
            oh.make_node("Slice", [data, names["starts"], names["ends"], names["axes"]],
                         [names["slice"]]),
            oh.make_node("Cast", [names["slice"]], [mask], to=onnx.TensorProto.BOOL)]


def _find_draws(model: onnx.ModelProto, ranks: Mapping[str, int]
                ) -> tuple[list[_Draw], str | None]:
    """Every draw whose data must be batched, or the reason folding is refused outright.

    SpatialDropout nodes become ONNX Dropout, which symbolic inference knows
    (only the data's shape is asked about). Its mask is data-shaped, while a
    SpatialDropout's mask has the noise shape (the torch helper's exports declare
    it so): an unread mask is removed, a read one recomputed with the noise shape
    (``Slice`` [0, 1) along the shared axes; the default ones need the data's declared
    rank ``ranks``), so that no declared shape contradicts what inference finds.
    """
    constants = Constants(model)
    read = _names_read(model)
    draws: list[_Draw] = []
    for scope in model_scopes(model):
        added: list[tuple[int, list[onnx.NodeProto]]] = []
        for index, node in enumerate(scope.nodes):
            label = _label(node, scope)
            if is_spatial_dropout(node):
                flag = input_at(node, 2)
                shared = get_attr(node, spec.ATTR_SHARED_AXES)
                axes = () if shared is None else tuple(int(a) for a in shared.ints)
                if flag and constants.scalar(scope, flag) not in (False, 0):
                    draws.append(_Draw(scope.index, node.input[0], label, axes))
                mask = node.output[1] if len(node.output) > 1 else ""
                mask_axes = axes if shared is not None else (
                    spec.default_shared_axes(ranks[node.input[0]])
                    if node.input[0] in ranks else None)
                if mask and (mask not in read or mask_axes is not None):
                    del node.output[1:]
                    if mask in read and mask_axes is not None:
                        added.append((index, _noise_shaped_mask(node, mask_axes, mask)))
                del node.input[1:]
                del node.attribute[:]
                node.op_type, node.domain, node.overload = "Dropout", "", ""
            elif node.op_type in _LIKE_OPS:
                draws.append(_Draw(scope.index, node.input[0], label))
            elif node.op_type in RANDOM_OPS:
                return [], f"{label} draws a shape that does not grow with the batch"
            elif node.op_type == "BatchNormalization":
                mode = get_attr(node, "training_mode")
                if mode is not None and mode.i:
                    return [], f"{label} computes batch statistics"
        for index, nodes in reversed(added):  # later positions first: earlier ones stay put
            for offset, extra in enumerate(nodes):
                scope.nodes.insert(index + 1 + offset, extra)
    return draws, None


class _InferenceStopped(Exception):
    """Symbolic shape inference gave up; the message says where, in the user's terms."""


class _StopRecorder(logging.Handler):
    """Keeps the node the symbolic inference says it stopped at (it logs it at debug)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.stopped_at: tuple[str, str] | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg == _STOP_MESSAGE and len(record.args or ()) == 2:
            self.stopped_at = (str(record.args[0]), str(record.args[1]))


#: The debug message onnxruntime's symbolic_shape_infer logs where it gives up.
_STOP_MESSAGE = "Stopping at incomplete shape inference at %s: %s"


def _node_in_traceback(err: BaseException) -> onnx.NodeProto | None:
    """The node the symbolic inference was working on when it raised (its frame's ``node``)."""
    tb = err.__traceback__
    found = None
    while tb is not None:
        candidate = tb.tb_frame.f_locals.get("node")
        if isinstance(candidate, onnx.NodeProto):
            found = candidate  # the innermost frame that has one
        tb = tb.tb_next
    return found


def _described(model: onnx.ModelProto, op: str, name: str) -> str:
    """``op`` node ``name`` as the user can find it: an unnamed node by its first output."""
    if not name:
        node = next((n for scope in model_scopes(model) for n in scope.nodes
                     if n.op_type == op and not n.name), None)
        if node is not None and node.output:
            known = "" if not node.domain or node.domain == "ai.onnx" else \
                f" (domain {printable(node.domain, 40)}, unknown to it)"
            return f"the {op} node that makes {printable(node.output[0], 80)}{known}"
    return f"{op} node {printable(name, 80)}"


@contextlib.contextmanager
def _recording_stops() -> Iterator[_StopRecorder]:
    """The symbolic inference's logger at debug level for this block, into a recorder only."""
    logger = logging.getLogger("onnxruntime.tools.symbolic_shape_infer")
    recorder = _StopRecorder()
    level, propagate = logger.level, logger.propagate
    logger.addHandler(recorder)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False  # its debug lines are for us, not for the user's log
    try:
        yield recorder
    finally:
        logger.removeHandler(recorder)
        logger.setLevel(level)
        logger.propagate = propagate


def _symbolic_inference(model: onnx.ModelProto) -> bytes:
    """The model with symbolic shapes, or _InferenceStopped saying where the inference stopped.

    Runs in a forked child inside ``isolated_checks`` and in-process otherwise: the
    working directory (the tool saves a file there when it gives up) is restored.
    """
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    with tempfile.TemporaryDirectory() as scratch, contextlib.chdir(scratch), \
            _recording_stops() as recorder:
        try:
            inferred = SymbolicShapeInference.infer_shapes(model, auto_merge=False)
        except Exception as err:  # noqa: BLE001 - the tool's own errors are internal text
            node = _node_in_traceback(err)
            if recorder.stopped_at is not None:
                op, name = recorder.stopped_at
                where = f"it cannot follow the shapes through {_described(model, op, name)}"
            elif node is not None:
                where = (f"it fails on {node.op_type} node "
                         f"{printable(node.name or node.output[0], 80)}")
            else:
                where = "it fails on this model"
            raise _InferenceStopped(where) from None
    if inferred is None:
        raise _InferenceStopped(f"the model's opset is older than the {_MIN_SYMBOLIC_OPSET} "
                                "it supports")
    return inferred.SerializeToString()


#: onnxruntime's symbolic shape inference returns None below this default-domain opset.
_MIN_SYMBOLIC_OPSET = 7


def _infer(model: onnx.ModelProto) -> tuple[TypeFacts | None, str]:
    try:  # imported here, once: every forked child then finds it loaded
        import onnxruntime.tools.symbolic_shape_infer  # noqa: F401 - needs sympy
    except ImportError as err:
        return None, f"onnxruntime's symbolic shape inference cannot be imported ({err})"
    skeleton_in_place(model)
    try:
        data = run_isolated(_symbolic_inference, model, what="inferring symbolic shapes")
    except _InferenceStopped as err:
        return None, f"onnxruntime's symbolic shape inference stops: {err}"
    except UserError as err:
        return None, str(err)
    except Exception:  # noqa: BLE001 - any other failure also means "cannot tell"
        return None, "onnxruntime's symbolic shape inference fails on this model"
    return declared_types(onnx.ModelProto.FromString(data)), ""


def _axis0(facts: TypeFacts, scope: Scope, name: str) -> object:
    found = facts.type_of(scope, name)
    return None if found is None or not found.dims else found.dims[0]


def _shown(dims: object) -> str:
    """Dims as text, the analysis copy's batch symbol written as "batch"."""
    if not isinstance(dims, tuple | list):
        return "batch" if dims == BATCH_SYMBOL else printable(dims, 60)
    return "[" + ", ".join("batch" if d == BATCH_SYMBOL else printable(d, 30) for d in dims) + "]"


def _contradiction(facts: TypeFacts, main: Scope, source: onnx.ModelProto) -> str:
    """A main-graph value whose inferred shape disagrees with the one the model declares
    (rank, or a known dimension), as text; "" when none does. Older onnxruntime releases
    inferred rank 7 for a rank-4 ``ConstantOfShape`` here, and the folded model came out
    invalid: the inference is trusted only where it agrees with the model."""
    declared = declared_types(source)
    source_main = model_scopes(source)[0]
    for name, want in declared.scope_types(source_main.index).items():
        got = facts.type_of(main, name)
        if want.dims is None or got is None or got.dims is None:
            continue
        if len(want.dims) != len(got.dims) or any(
                isinstance(a, int) and isinstance(b, int) and a != b
                for a, b in zip(want.dims, got.dims, strict=True)):
            return (f"{printable(name)} is declared {_shown(want.dims)}, inferred "
                    f"{_shown(got.dims)}")
    return ""


def check_folding(prepared: PreparedSource) -> FoldCheck:
    """Whether the samples of ``prepared`` can be folded into its batch; see the module."""
    inputs = _batched_inputs(prepared.inputs)
    if not inputs.foldable:
        return inputs
    try:
        model, ranks = _analysis_copy(prepared, inputs.batched_inputs)
    except UserError as err:  # the inliner crashed on this model: the loop still works
        return FoldCheck(False, f"the batch axis cannot be traced: {err}")
    draws, refusal = _find_draws(model, ranks)
    if refusal:
        return FoldCheck(False, refusal)
    facts, problem = _infer(model)
    if facts is None:
        return FoldCheck(False, f"the batch axis cannot be traced: {problem}")
    scopes = model_scopes(model)
    contradiction = _contradiction(facts, scopes[0], prepared.model)
    if contradiction:
        return FoldCheck(False, f"the batch axis cannot be traced: symbolic shape inference "
                                f"contradicts the model ({contradiction})")
    for output in prepared.outputs:
        seen = _axis0(facts, scopes[0], output.value)
        if seen != BATCH_SYMBOL:
            return FoldCheck(False, f"axis 0 of output {printable(output.source)} is not "
                                    f"provably the batch (inferred: {_shown(seen)})")
    for draw in draws:
        scope = scopes[draw.scope_index]
        axes = draw.shared_axes
        if any(a < 0 for a in axes):
            rank = facts.rank_of(scope, draw.data)
            if not rank:
                return FoldCheck(False, f"{draw.label}: the rank of its data is unknown")
            axes = tuple(a % rank for a in axes)
        if 0 in axes:
            return FoldCheck(False, f"{draw.label} shares one decision along axis 0, the batch: "
                                    "folded samples would share it too")
        seen = _axis0(facts, scope, draw.data)
        if seen != BATCH_SYMBOL:
            return FoldCheck(False, f"{draw.label}: axis 0 of its data is not provably the "
                                    f"batch (inferred: {_shown(seen)})")
    names = ", ".join(printable(n) for n in inputs.batched_inputs)
    main = scopes[0]
    values = [*(i.name for i in model.graph.input), *(o for n in main.nodes for o in n.output)]
    batched = {}
    for name in values:
        found = facts.type_of(main, name) if name else None
        if found is not None and found.dims and found.dims[0] == BATCH_SYMBOL:
            batched[name] = len(found.dims)
    return FoldCheck(True, f"every input ({names}) and output has the batch at axis 0 and "
                           f"each of the {len(draws)} draws is per row", inputs.batched_inputs,
                     batched)
