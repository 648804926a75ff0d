"""Inline: every SpatialDropout replaced by standard ONNX ops, for runtimes without functions.

OpenVINO (and other runtimes that accept neither a custom domain nor model-local
functions) cannot run ``SpatialDropout``, even with its function body attached.
``inline(model)`` writes the model with each node replaced by the body itself:

0. Loop/Scan bodies get the portable form (``passes.portable_loops``: OpenVINO
   refuses pass-through body outputs, onnx.reference concatenates rank-2 scan
   outputs), also when there is nothing to inline (e.g. a stripped model).
1. Dropout nodes that train are brought along: an ONNX ``Dropout`` whose
   ``training_mode`` input is not a constant false becomes
   ``SpatialDropout(shared_axes=[])`` first (the same computation: one decision
   per element, kept values scaled by 1/(1-ratio)), because OpenVINO refuses a
   training ``Dropout`` and onnxruntime deletes an interior one whatever its
   ``training_mode``.
2. :func:`~spatialdrop_onnx.function_body.bodies_for_inlining` gives every node
   its body variant (seed, arithmetic path, and a draw of its own among the unseeded
   sites of its graph; also inside model-local functions),
   and ``onnx.inliner.inline_selected_functions`` splices exactly those bodies in
   (in the main graph, in If/Loop/Scan bodies and in the user's own functions,
   which stay functions); it runs in a forked child (``isolation``).
3. Our opset import goes; the model's IR version is kept. Random ops get names
   tract reads right (:func:`name_random_ops`): tract takes a random op for a
   ``*Like`` op when its node *name* ends in ``Like`` and for a normal one when it
   starts with ``RandomNormal``, whatever its type (``onnx.inliner`` suffixes the
   body's names with ``__1``).
4. The ``training_mode`` input loses its initializer default and must be fed:
   OpenVINO takes an input that has an initializer for a constant, which would
   freeze the switch at its default (false: dropout could never be turned on).
5. With ``unroll_loops`` (``inline --unroll-loops``), every main-graph ``Loop`` that
   runs a constant number of steps is written out step by step
   (:mod:`.passes.loop_unrolling`): tract runs no ``Loop`` (nor did onnx2tf convert
   tf2onnx's RNN Loop).

With ``all_functions`` the user's own model-local functions are inlined too
(``onnx.inliner.inline_local_functions``): OpenVINO takes a call of one for an
unknown operator. They are inlined first, so that the sites of two calls of one
function draw through distinct nodes (step 2).

The result computes what the model computes: channel-wise decisions, the
``training_mode`` switch (still a graph input, now without default), the optional
``mask`` output, with the body's plainest form (no ``If``, no double tensors
unless the model has them, shapes that do not depend on the switch's value: see
docs/function-body.md), which tract and onnx2tf follow. Its random numbers come
from the runtime's ``RandomUniformLike`` (as the function body's do); a seeded
node stays seeded.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, replace

import onnx

from . import spec
from .errors import UserError, prefixed_with, printable
from .function_body import MIN_OPSET, bodies_for_inlining
from .graph import (
    check_acyclic,
    check_opset_imports,
    default_opset,
    drop_our_unused_functions,
    dropout_to_spatial,
    get_attr,
    is_spatial_dropout,
    model_scopes,
    take_switch_default,
)
from .isolation import run_isolated
from .passes.loop_unrolling import unroll_loops as unroll_loops_in_place
from .passes.portable_loops import make_loops_portable
from .passes.result import ModelArg, PassResult, load_argument


@dataclass(frozen=True)
class InlineReport:
    """What inline replaced: SpatialDropout nodes (ONNX Dropout that trains counted apart)."""

    #: SpatialDropout nodes replaced by standard ops (the converted Dropout nodes included).
    inlined: int = 0
    #: ONNX Dropout nodes with a training_mode input, lowered with them.
    dropout_lowered: int = 0
    #: Of the replaced nodes: how many carry a seed, sit in a subgraph, sit in a function.
    seeded: int = 0
    in_subgraphs: int = 0
    in_functions: int = 0
    #: The user's model-local functions inlined (``all_functions``) and removed.
    functions_inlined: int = 0
    #: The initializer default the ``training_mode`` input had (now removed), if any.
    switch_default: bool | None = None
    #: With ``unroll_loops``: the Loops written out step by step, their steps, and the
    #: Loops left ("<Loop>: <why>"; see :mod:`.passes.loop_unrolling`).
    loops_unrolled: tuple[str, ...] = ()
    unrolled_steps: int = 0
    loops_left: tuple[str, ...] = ()

    @property
    def modified(self) -> bool:
        return self.inlined > 0 or bool(self.loops_unrolled)

    def to_dict(self) -> dict:
        return asdict(self)


#: Random ops, which tract tells apart by node name (see :func:`name_random_ops`).
_RANDOM_OPS = ("RandomUniform", "RandomUniformLike", "RandomNormal", "RandomNormalLike")


def _tract_reads_right(name: str, op_type: str) -> bool:
    return (name.endswith("Like") == op_type.endswith("Like")
            and name.startswith("RandomNormal") == op_type.startswith("RandomNormal"))


def name_random_ops(model: onnx.ModelProto) -> int:
    """Rename (in place) every random op whose name tract would misread; return how many.

    tract 0.23's ONNX parser picks ``RandomUniform``/``RandomNormal`` and the ``*Like``
    forms from the node's name, not its type: an unnamed ``RandomUniformLike`` fails to
    load ("expected attribute 'shape'"). The new name is the first of
    ``<old name>/<op_type>``, ``<op_type>/<old name>``, ``<op_type>/<old name>/<op_type>``
    that tract reads as the node's type (the output's name stands for a missing name).
    """
    renamed = 0
    for scope in model_scopes(model, include_ours=True):
        for node in scope.nodes:
            if node.domain not in ("", "ai.onnx") or node.op_type not in _RANDOM_OPS:
                continue
            if _tract_reads_right(node.name, node.op_type):
                continue
            base, op = node.name or node.output[0], node.op_type
            node.name = next(name for name in (f"{base}/{op}", f"{op}/{base}", f"{op}/{base}/{op}")
                             if _tract_reads_right(name, op))
            renamed += 1
    return renamed


def _inline(model: onnx.ModelProto, all_functions: bool) -> bytes:
    import onnx.inliner

    if all_functions:
        return onnx.inliner.inline_local_functions(model).SerializeToString()
    inlined = onnx.inliner.inline_selected_functions(model, [(spec.DOMAIN, spec.OP_TYPE)])
    return inlined.SerializeToString()


def inline(model: ModelArg, *, all_functions: bool = False,
           unroll_loops: bool = False) -> PassResult[InlineReport]:
    """Replace every SpatialDropout of ``model`` (a ModelProto or a path) by standard ops.

    Returns a new model with no node, function or opset import of our domain
    left; see the module docstring. ``all_functions`` inlines the user's
    model-local functions as well. ``unroll_loops`` then writes out every main-graph
    ``Loop`` that runs a constant number of steps (for tract, which runs no Loop; the
    report names the Loops left and why). A model with nothing to inline is
    returned unchanged. Raises UserError when the
    default-domain opset is below ``MIN_OPSET`` (convert it first, e.g. with
    ``spatialdrop-onnx rewrite``) or a node is invalid for its data's rank.
    """
    result = _inline_sites(model, all_functions)
    if not unroll_loops:
        return result
    written = unroll_loops_in_place(result.model)
    return PassResult(result.model, replace(result.report, loops_unrolled=written.unrolled,
                                            unrolled_steps=written.steps,
                                            loops_left=written.left))


def _inline_sites(model: ModelArg, all_functions: bool) -> PassResult[InlineReport]:
    given = load_argument(model, "inline")
    # Inlining and sampling rebuild tensors: they work on a complete model, not a skeleton.
    proto = given.complete(given.model)
    check_opset_imports(proto)
    check_acyclic(proto)
    result = onnx.ModelProto()
    result.CopyFrom(proto)
    lowered = dropout_to_spatial(result)
    # Loop/Scan bodies OpenVINO reads and onnx.reference stacks right (also with no site left).
    make_loops_portable(result)
    sites = [(scope, node) for scope in model_scopes(result) for node in scope.nodes
             if is_spatial_dropout(node)]
    users = sum(1 for f in result.functions if f.domain != spec.DOMAIN) if all_functions else 0
    if not sites and not users:
        drop_our_unused_functions(result)
        return PassResult(result, InlineReport(switch_default=take_switch_default(result)))
    report = InlineReport(functions_inlined=users,
        inlined=len(sites), dropout_lowered=lowered,
        seeded=sum(1 for _, n in sites if get_attr(n, spec.ATTR_SEED) is not None),
        in_subgraphs=sum(1 for s, _ in sites if s.parent is not None),
        in_functions=sum(1 for s, _ in sites if s.function is not None))
    opset = default_opset(result.opset_import)
    if sites and opset < MIN_OPSET:
        raise UserError(f"the model imports default-domain opset {opset}; inlining SpatialDropout "
                        f"needs >= {MIN_OPSET} (spatialdrop-onnx rewrite converts it)")
    user_domains = {f.domain for f in result.functions}
    if users:
        # The user's functions first: each call's sites then get draws of their own
        # (OpenVINO merges equal draws; bodies_for_inlining tells apart the sites of a graph).
        # Bodies of ours the model may carry go: bodies_for_inlining writes the ones to splice.
        ours = [f for f in result.functions if f.domain == spec.DOMAIN]
        for function in ours:
            result.functions.remove(function)
        result = onnx.ModelProto.FromString(
            run_isolated(_inline, result, True, what="inlining the model's functions"))
    try:
        prepared = bodies_for_inlining(result)
    except (ValueError, spec.SpatialDropoutError) as err:
        raise UserError(f"cannot inline SpatialDropout: {printable(err)}") from None
    inlined = onnx.ModelProto.FromString(
        run_isolated(_inline, prepared, False, what="inlining SpatialDropout"))
    drop_our_unused_functions(inlined)
    if all_functions:
        _drop_unused_imports(inlined, user_domains)
    left = [s.path for s in model_scopes(inlined, include_ours=True) for n in s.nodes
            if n.domain == spec.DOMAIN]
    if left or any(f.domain == spec.DOMAIN for f in inlined.functions):
        raise UserError(f"inlining left SpatialDropout nodes in {printable(', '.join(left))}")
    name_random_ops(inlined)
    # Overloads were needed only until the bodies were spliced in.
    inlined.ir_version = proto.ir_version
    default = take_switch_default(inlined)
    if default is not None:
        report = replace(report, switch_default=default)
    return PassResult(inlined, report)


def _drop_unused_imports(model: onnx.ModelProto, domains: set[str]) -> None:
    """Remove imports of these (function) domains that no node uses any more."""
    used = {n.domain for s in model_scopes(model, include_ours=True) for n in s.nodes}
    for owner in [model, *model.functions]:
        kept = [o for o in owner.opset_import if o.domain in used or o.domain not in domains]
        if len(kept) != len(owner.opset_import):
            del owner.opset_import[:]
            owner.opset_import.extend(kept)


def inline_file(src: str | os.PathLike, dst: str | os.PathLike, *, all_functions: bool = False,
                unroll_loops: bool = False, in_place: bool = False) -> InlineReport:
    """Load ``src`` safely, inline its SpatialDropout nodes and save atomically to ``dst``."""
    from .modelio import check_output_path, load_model, save_model

    loaded = load_model(src)
    check_output_path(dst, loaded, in_place)  # refuse before the slow work
    with prefixed_with(src):  # the pass's errors name the user's file
        result = inline(loaded, all_functions=all_functions, unroll_loops=unroll_loops)
    save_model(result.model, dst, source=loaded, in_place=in_place)
    return result.report
