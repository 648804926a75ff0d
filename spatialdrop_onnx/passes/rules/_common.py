"""What every dropout rewrite rule shares: the rewrite context, checks, and the replacement.

A rule (one class per exporter pattern, in the sibling modules) declares a
``pattern`` and a ``check``. The check works out a :class:`Conversion` (data
tensor, ratio, shared axes) or fails with a :class:`MatchResult` that says
why ("noise dim 2 is 3, neither 1 nor the data dim 6"). The replacement is
the same for every rule: ``SpatialDropout`` when some axis is shared, ONNX
``Dropout``-13 when none is, both reading the scope's ``training_mode``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern as orp

from ... import spec
from ...graph import DEFAULT_DOMAINS, NameMaker
from ...sites import Kind, Site
from ..shapes import Dim, ShapeReasoner, WholeShape, shared_axes_for

SPATIAL_OP = spec.OP_TYPE


@dataclass
class Conversion:
    """What a rule found at one site, as the replacement needs it."""

    name: str
    rule: str
    ratio: float
    shared_axes: list[int]
    graph: str
    data: ir.Value
    #: When the mask is applied in a transposed layout: the permutation applied
    #: after the dropout (shared axes are given in the data's own layout).
    perm: list[int] | None = None
    seed: int | None = None
    random_op: str = ""
    #: Element-wise, but always written as SpatialDropout(shared_axes=[]) (RNN masks:
    #: onnxruntime would optimise a Dropout node there away, see ``options.ElementwiseOp``).
    force_spatial: bool = False

    def writes_dropout(self, elementwise: str) -> bool:
        """Whether the replacement is ONNX Dropout (else SpatialDropout)."""
        return not self.shared_axes and not self.force_spatial and elementwise == "dropout"

    def site(self, elementwise: str = "dropout") -> Site:
        """The site as inspect and the reports show it (ratio: what rewrite writes)."""
        return Site(
            name=self.name, kind=Kind.RANDOM_SUBGRAPH, graph=self.graph,
            op_type=self.random_op, ratio=framework_ratio(self.ratio),
            shared_axes=tuple(self.shared_axes), seed=self.seed, rule=self.rule,
            becomes="Dropout" if self.writes_dropout(elementwise) else SPATIAL_OP)


@dataclass
class RewriteContext:
    """State shared by the rules during one rewrite of one model."""

    model: ir.Model
    shapes: ShapeReasoner
    #: Graph/function -> display path; subgraph -> owning function (None: main graph).
    paths: dict[int, str]
    owners: dict[int, ir.Function | None]
    make_training_value: Callable[[ir.Function | None], ir.Value]
    names: NameMaker
    conversions: list[Conversion] = field(default_factory=list)
    #: Existing Dropout/SpatialDropout nodes given the training switch.
    rewired: list[Site] = field(default_factory=list)
    #: Random node -> why no rule converted it (first informative reason).
    failures: dict[int, tuple[ir.Node, str]] = field(default_factory=dict)
    #: Values the removed nodes read: candidates for dead-code removal.
    dead_candidates: list[ir.Value] = field(default_factory=list)
    elementwise: str = "dropout"

    def path_of(self, graph_or_function: ir.Graph | ir.Function) -> str:
        return self.paths.get(id(graph_or_function), "main")

    def training_for(self, graph_or_function: ir.Graph | ir.Function) -> ir.Value:
        owner = self.owners.get(id(graph_or_function))
        return self.make_training_value(owner)

    def fresh(self, base: str) -> str:
        """A node/value name not used anywhere in the model yet."""
        return self.names(base)


class DropoutRule(orp.RewriteRuleClassBase):
    """Base of the dropout rules: subclasses give ``pattern`` and ``analyse``.

    ``analyse(context, **bindings)`` returns a :class:`Conversion` or raises
    :class:`NoMatch` with the reason; ``check`` turns that into a
    ``MatchResult`` and records the reason against the random node so
    ``inspect`` can explain an unconverted site.
    """

    #: Whether a failed check's reason describes the site (False for rules that
    #: only specialise another rule, whose reasons would be uninformative).
    explains_failures = True
    #: Op type of the pattern's last node: the node a match is tried at.
    root_op: str = ""
    #: Random op types whose site this rule can match (the engine searches
    #: downstream of each such node for a ``root_op`` node to try).
    anchors: frozenset[str] = frozenset()

    def __init__(self, ctx: RewriteContext, name: str) -> None:
        super().__init__(name=name, remove_nodes=True)
        self.ctx = ctx
        self._found: Conversion | None = None
        self._graph: ir.Graph | ir.Function | None = None

    def analyse(self, context: orp.MatchContext, **bindings: object) -> Conversion:
        raise NotImplementedError

    def variants(self) -> list[orp.RewriteRule]:
        """The rule with every operand order of its commutative ops (Add, Mul, ...)."""
        return orp.RewriteRule(self.pattern, self.rewrite, self.check, name=self.name,
                               remove_nodes=self.remove_nodes).commute()

    def check(self, context: orp.MatchContext, **bindings: object) -> orp.MatchResult:
        result = orp.MatchResult()
        self._found = None
        try:
            found = self.analyse(context, **bindings)
        except NoMatch as err:
            if self.explains_failures and err.random_node is not None:
                self.ctx.failures.setdefault(id(err.random_node), (err.random_node, err.reason))
            return result.fail(err.reason)
        self._found = found
        self._graph = context.graph_or_function
        for node in context.nodes:
            self.ctx.dead_candidates.extend(v for v in node.inputs if v is not None)
        return result

    def rewrite(self, op: orp.RewriterContext, **bindings: object) -> ir.Value:
        found = self._found
        assert found is not None and self._graph is not None
        self.ctx.conversions.append(found)
        training = self.ctx.training_for(self._graph)
        return emit_dropout(op, found, training, self.ctx)


class NoMatch(Exception):
    """A rule's structural match is not a convertible dropout; ``reason`` says why."""

    def __init__(self, reason: str, random_node: ir.Node | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.random_node = random_node


def framework_ratio(ratio: float) -> float:
    """The rate the framework was given, recovered from the float32 the exporter wrote.

    Exporters store the rate, or the keep probability 1 - rate, as float32; Keras and
    PyTorch compute their scale from the decimal the user wrote. The shortest decimal
    that round-trips that float32 (0.45 for 0.44999998807907104; 0.8 for a keep
    probability that gives 0.19999998807907104) is that decimal, so the op's scale
    T(1/(1-ratio)) matches the framework's.
    """
    as_rate = Decimal(str(np.float32(ratio)))
    as_keep = 1 - Decimal(str(np.float32(1.0 - ratio)))
    return float(min(as_rate, as_keep, key=lambda d: len(d.normalize().as_tuple().digits)))


def emit_dropout(op: orp.RewriterContext, site: Conversion, training: ir.Value,
                 ctx: RewriteContext) -> ir.Value:
    """The replacement: SpatialDropout / Dropout-13 on the data, then the layout permutation.

    The new dropout node takes the name of the node whose output it replaces.
    """
    name = site.name or ctx.fresh("dropout")
    ratio_name = ctx.fresh(f"{name}/ratio")
    ratio = op.Constant(value=ir.tensor(np.array(framework_ratio(site.ratio), dtype=np.float64),
                                        name=ratio_name),
                        _name=ratio_name, _outputs=[ratio_name])
    seed = {} if site.seed is None else {spec.ATTR_SEED: site.seed}
    if site.perm is not None:
        out_name = [ctx.fresh(f"{name}/output")]
    else:
        out_name = 1
    if site.writes_dropout(ctx.elementwise):
        output = op.Dropout(site.data, ratio, training, _name=name, _outputs=out_name, **seed)
    else:
        output = op.op(spec.OP_TYPE, site.data, ratio, training, _domain=spec.DOMAIN,
                       _name=name, _outputs=out_name, **seed,
                       # Typed explicitly: an empty list has no type of its own.
                       **{spec.ATTR_SHARED_AXES: ir.AttrInt64s(spec.ATTR_SHARED_AXES,
                                                               list(site.shared_axes))})
    if site.perm is not None:
        output = op.Transpose(output, perm=list(site.perm),
                              _name=ctx.fresh(f"{name}/transpose"))
    return output


# --- Checks shared by the rules ------------------------------------------------


def float_data(x: ir.Value) -> None:
    if x.dtype not in (None, ir.DataType.UNDEFINED) and not x.dtype.is_floating_point():
        raise NoMatch(f"data {x.name!r} is {x.dtype}, not floating point")


def constant(ctx: RewriteContext, value: ir.Value | None, what: str,
             random_node: ir.Node | None) -> float:
    found = ctx.shapes.scalar(value)
    if found is None or not math.isfinite(found):
        name = value.name if value is not None else "(none)"
        raise NoMatch(f"{what} {name!r} is not a constant scalar", random_node)
    return found


def close(a: float, b: float, rtol: float = 2e-6) -> bool:
    return math.isclose(a, b, rel_tol=rtol, abs_tol=1e-12)


def tolerance_for(value: ir.Value | None) -> float:
    """Relative tolerance for comparing a constant stored in ``value``'s type with a double."""
    if value is not None and value.dtype in (ir.DataType.FLOAT16, ir.DataType.BFLOAT16):
        return 1e-2
    if value is not None and value.dtype == ir.DataType.DOUBLE:
        return 1e-12
    return 2e-6


def check_ratio(ratio: float, random_node: ir.Node | None) -> float:
    if not 0.0 <= ratio < 1.0:
        raise NoMatch(f"drop probability {ratio:g} is outside [0, 1)", random_node)
    return ratio


def check_scale(multiplier: float, ratio: float, value: ir.Value | None,
                random_node: ir.Node | None) -> None:
    """The kept values must be scaled by 1/(1-ratio): inverted dropout."""
    expected = 1.0 / (1.0 - ratio)
    if not close(multiplier, expected, tolerance_for(value)):
        raise NoMatch(
            f"kept values are scaled by {multiplier:.9g}, not 1/(1-ratio) = {expected:.9g}",
            random_node)


def uniform_range(node: ir.Node) -> tuple[float, float]:
    low = node.attributes.get("low")
    high = node.attributes.get("high")
    return (low.as_float() if low is not None else 0.0,
            high.as_float() if high is not None else 1.0)


def seed_of(node: ir.Node) -> int | None:
    """A random op's float ``seed`` as our int ``seed`` (seeded sites stay seeded)."""
    attr = node.attributes.get("seed")
    if attr is None:
        return None
    value = attr.as_float()
    return int(value) if float(value).is_integer() else None


def shared_axes(ctx: RewriteContext, noise: list[Dim] | WholeShape | None, data: ir.Value,
                random_node: ir.Node | None) -> list[int]:
    """Shared axes from the noise-shape elements (see :mod:`..shapes`); NoMatch if unknown."""
    if noise is None:
        raise NoMatch("the noise shape cannot be worked out", random_node)
    axes, reason = shared_axes_for(ctx.shapes, noise, data)
    if axes is None:
        raise NoMatch(reason, random_node)
    return axes


def noise_of_tensor(ctx: RewriteContext, like: ir.Value) -> list[Dim] | WholeShape | None:
    """The noise elements of a ``*Like`` random op: the dims of the tensor it copies.

    For ``ConstantOfShape(s)`` they are the elements of ``s`` (None when unknown:
    an unknown value is not a tensor dimension).
    """
    producer = like.producer()
    if producer is not None and producer.op_type == "ConstantOfShape" and producer.inputs:
        return ctx.shapes.shape_elements(producer.inputs[0])
    rank = ctx.shapes.rank(like)
    if rank is None:
        return WholeShape(like)
    return [ctx.shapes.dim(like, k) for k in range(rank)]


def keep_ratio_from_threshold(threshold: float, low: float, high: float, keep_below: bool,
                              random_node: ir.Node | None) -> float:
    """Drop probability for ``keep = u < t`` (keep_below) or ``keep = u >= t``, u ~ U[low, high)."""
    if not high > low:
        raise NoMatch(f"uniform range [{low:g}, {high:g}) is empty", random_node)
    fraction = (threshold - low) / (high - low)
    ratio = 1.0 - fraction if keep_below else fraction
    return check_ratio(ratio, random_node)


# --- Layout changes between the scaled data and the mask --------------------------


def layout_change(ctx: RewriteContext, value: ir.Value, random_node: ir.Node | None
                  ) -> tuple[list[int], ir.Value] | None:
    """``(perm, x)`` when ``value`` is ``x`` in another layout, else None.

    Exporters that move a Conv2D to NCHW leave a layout change between the
    scaled data and the mask: a ``Transpose``, or — when it only moves size-1
    axes, as after ``GlobalAveragePooling2D(keepdims=True)`` — a ``Reshape``
    (tf2onnx's optimiser writes ``Transpose<0,2,3,1>`` of ``(N, C, 1, 1)`` as
    ``Reshape(-1, 1, 1, C)``). ``perm`` follows ``Transpose``: axis ``i`` of
    ``value`` is axis ``perm[i]`` of ``x``.
    """
    node = value.producer()
    if node is None or node.domain not in DEFAULT_DOMAINS or not node.inputs or \
            node.inputs[0] is None or value is not node.outputs[0]:
        return None
    if node.op_type == "Transpose":
        attr = node.attributes.get("perm")
        if attr is None:
            raise NoMatch("Transpose without perm", random_node)
        return list(attr.as_ints()), node.inputs[0]
    if node.op_type == "Reshape" and len(node.inputs) == 2:
        perm = reshape_as_permutation(ctx, node)
        if perm is not None:
            return perm, node.inputs[0]
    return None


def reshape_as_permutation(ctx: RewriteContext, node: ir.Node) -> list[int] | None:
    """The ``Transpose`` permutation a ``Reshape`` node equals, or None if it is not one.

    A Reshape is a pure layout change when it keeps the rank and only moves
    size-1 axes: its input's axes that are not known to be 1 appear, in the same
    order and with provably equal sizes, as the target's entries that are not 1
    (a ``-1`` stands for the one it leaves, a ``0`` copies the input dim).
    Element order is then unchanged, so ``Transpose(perm)`` gives the same
    tensor: axes of size other than 1 keep their relative order, and size-1
    axes are paired in order.
    """
    data, target_value = node.inputs
    target_array = ctx.shapes.const(target_value)
    rank = ctx.shapes.rank(data)
    if target_array is None or target_array.ndim != 1 or rank is None or \
            rank != target_array.size:
        return None
    target = [int(t) for t in target_array]
    allow_zero = node.attributes.get("allowzero")
    if allow_zero is not None and allow_zero.as_int() and 0 in target:
        return None  # a literal 0-sized axis: not a layout change
    dims = [ctx.shapes.dim(data, k) for k in range(rank)]
    resolved: list[Dim | None] = [dims[k] if t == 0 else (None if t == -1 else t)
                                  for k, t in enumerate(target)]  # None: the -1 entry
    if target.count(-1) > 1:
        return None
    in_big = [k for k, d in enumerate(dims) if d != 1]
    out_big = [k for k, d in enumerate(resolved) if d != 1]
    if len(in_big) != len(out_big):
        return None
    for i, o in zip(in_big, out_big, strict=True):
        if resolved[o] is not None and resolved[o] != dims[i]:
            return None  # a different size: not the same axis
    in_one = [k for k in range(rank) if k not in in_big]
    out_one = [k for k in range(rank) if k not in out_big]
    perm = [0] * rank
    for o, i in [*zip(out_big, in_big, strict=True), *zip(out_one, in_one, strict=True)]:
        perm[o] = i
    return perm
