"""Batch folding: the stochastic part of the model run once on N copies of the batch.

The deterministic prefix (:mod:`.stochastic`) runs once at batch B. Every
batched value [B, ...] it hands to the stochastic part is repeated N times
along axis 0, ``Tile(v, [N, 1, ...])`` = [N*B, ...] (sample s of row b at row
s*B + b); values that carry the batch otherwise (a ``Shape`` of a batched
tensor, the arithmetic on it) are recomputed on the stochastic side from the
repeated tensors; constants are shared. Each sampled output [N*B, ...] is
reshaped to [N, B, ...] and reduced over axis 0 in double: the mean, then the
population deviation from it (two passes: no cancellation). A classification
output's [N, B, ..., C] probabilities and their per-sample entropies are summed
over axis 0 in float (:mod:`.classification`).

With dropout late in a model (a classifier head), most of the work is the
prefix, done once instead of N times. Valid only for models
:func:`~.folding.check_folding` accepts; it names the batched values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import onnx
from onnx import NodeProto
from onnx import helper as oh

from ...graph import NameMaker, rename_values, subgraphs
from . import classification
from .source import PreparedSource, SampledOutput
from .stats import DOUBLE, INT64, cast_to, constant, mean_and_m2, output_infos, stacked_samples
from .stochastic import partition


class _Unshareable(Exception):
    """A value the stochastic side needs cannot be recomputed there (a node with a body)."""


def _stochastic_side(nodes: list[onnx.NodeProto], stochastic: set[int],
                     reads: tuple[frozenset[str], ...], inputs: set[str],
                     batched: Mapping[str, int], needed: list[str], fresh: NameMaker
                     ) -> tuple[dict[str, str], dict[int, dict[str, str]]]:
    """What the stochastic side reads in place of prefix values.

    Returns ``tiles`` (prefix value -> its repeated name) and ``copies`` (prefix node index
    -> the renaming of its outputs, for a node recomputed on the stochastic side). Raises
    _Unshareable when a value would need a copy of a node with a body.
    """
    producer = {out: i for i, node in enumerate(nodes) for out in node.output if out}
    depends = set(inputs)  # values that depend on the graph's inputs
    for i, node in enumerate(nodes):
        if reads[i] & depends:
            depends.update(o for o in node.output if o)
    tiles: dict[str, str] = {}
    copies: dict[int, dict[str, str]] = {}
    pending = [name for i in sorted(stochastic) for name in reads[i]] + list(needed)
    while pending:
        name = pending.pop()
        source = producer.get(name)
        if source is not None and (source in stochastic or source in copies):
            continue
        if name in tiles or name not in depends:
            continue  # repeated already, or a constant: shared
        if name in batched:
            tiles[name] = fresh(f"{name}/mc_tiled")
        elif source is None:
            continue  # an unbatched input (a scalar): shared by every sample
        else:
            node = nodes[source]
            if any(True for _ in subgraphs(node)):
                raise _Unshareable(node.name or node.op_type)
            copies[source] = {o: fresh(f"{o}/mc_folded") for o in node.output if o}
            pending.extend(reads[source])
    return tiles, copies


def _renamed(node: onnx.NodeProto, mapping: dict[str, str],
             outputs: dict[str, str] | None = None) -> onnx.NodeProto:
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    for i, name in enumerate(copy.input):
        copy.input[i] = mapping.get(name, name)
    if outputs:
        for i, name in enumerate(copy.output):
            copy.output[i] = outputs.get(name, name)
        if copy.name:
            copy.name = outputs[node.output[0]] if node.output and node.output[0] else copy.name
    for _, sub in subgraphs(copy):
        rename_values(sub, mapping)
    return copy


@dataclass
class Fold:
    """The model split for folding: the prefix at batch B, the values it hands over
    repeated, and the stochastic side reading the repeated values."""

    prefix: list[onnx.NodeProto]  # deterministic nodes, run once at batch B
    tiles: dict[str, str]  # prefix value -> the name of its repeated copy
    folded: list[NodeProto]  # the stochastic side (and the nodes it recomputes), renamed
    mapping: dict[str, str]  # every value the stochastic side reads under another name
    #: False when a value the stochastic side needs could not be recomputed there (a node
    #: with a body): then every node runs on the repeated inputs.
    shares_prefix: bool = True


def fold(prepared: PreparedSource, batched: Mapping[str, int],
         share_prefix: bool = True) -> Fold:
    """Split ``prepared.model``'s main graph for folding (the graph itself is not changed).

    ``batched``: main-graph values whose axis 0 is the batch (the folding check's proof).
    Without ``share_prefix`` every node runs on the repeated inputs.
    """
    nodes = list(prepared.model.graph.node)
    inputs = {i.name for i in prepared.inputs}
    split = partition(prepared.model)
    stochastic = set(split.stochastic) if share_prefix else set(range(len(nodes)))
    needed = [o.value for o in prepared.outputs]
    shared = share_prefix
    try:
        tiles, copies = _stochastic_side(nodes, stochastic, split.reads, inputs, batched,
                                         needed, prepared.fresh)
    except _Unshareable:
        shared = False
        stochastic = set(range(len(nodes)))
        tiles, copies = _stochastic_side(nodes, stochastic, split.reads, inputs, batched,
                                         needed, prepared.fresh)
    mapping = dict(tiles)
    for outputs in copies.values():
        mapping.update(outputs)
    prefix = [nodes[i] for i in range(len(nodes)) if i not in stochastic]
    folded = []
    for i, node in enumerate(nodes):
        if i in copies:
            folded.append(_renamed(node, mapping, copies[i]))
        if i in stochastic:
            folded.append(_renamed(node, mapping))
    return Fold(prefix, tiles, folded, mapping, shared)


def keep_prefix_value_info(graph: onnx.GraphProto, prefix: list[onnx.NodeProto]) -> None:
    """Declared shapes of the stochastic side say B where it has N*B: keep the prefix's only."""
    kept_info = {o for node in prefix for o in node.output}
    infos = [info for info in graph.value_info if info.name in kept_info]
    del graph.value_info[:]
    graph.value_info.extend(infos)


def build_batch(prepared: PreparedSource, samples: int, keep_samples: bool,
                batched: Mapping[str, int], share_prefix: bool = True) -> onnx.ModelProto:
    """The folded Monte-Carlo model (``prepared.model`` is changed and returned).

    ``batched``: main-graph values whose axis 0 is the batch, with their ranks (the folding
    check's proof).
    Without ``share_prefix`` every node runs at N*B (the inputs are repeated).
    """
    model, fresh = prepared.model, prepared.fresh
    graph = model.graph
    parts = fold(prepared, batched, share_prefix)
    count, count_node = constant(fresh, "mc/repeats", INT64, [samples])
    head = [count_node]
    for name, tiled in parts.tiles.items():
        head += tile(name, tiled, count, batched.get(name), fresh)
    keep_prefix_value_info(graph, parts.prefix)
    del graph.input[:]
    graph.input.extend(prepared.inputs)
    tail = _statistics(prepared, samples, keep_samples, parts.mapping, fresh)
    del graph.node[:]
    graph.node.extend([*parts.prefix, *head, *parts.folded, *tail])
    del graph.output[:]
    for output in prepared.outputs:
        graph.output.extend(output_infos(output, samples, keep_samples))
    return model


def tile(name: str, tiled: str, count: str, rank: int | None,
         fresh: NameMaker) -> list[onnx.NodeProto]:
    """``tiled`` = ``name`` repeated ``count`` (an int64 [1] value) times along axis 0."""
    if rank is not None:
        if rank == 1:
            return [oh.make_node("Tile", [name, count], [tiled], name=tiled)]
        ones, o_node = constant(fresh, f"{name}/mc_ones", INT64, [1] * (rank - 1))
        reps = fresh(f"{name}/mc_repeats")
        return [o_node, oh.make_node("Concat", [count, ones], [reps], name=reps, axis=0),
                oh.make_node("Tile", [name, reps], [tiled], name=tiled)]
    # Rank unknown here: the count followed by ones for the other axes, at run time.
    shape, rank_v, rest, ones, reps = (fresh(f"{name}/mc_{k}") for k in
                                       ("shape", "rank", "rest", "ones", "repeats"))
    one, o_node = constant(fresh, f"{name}/mc_one", INT64, [1])
    return [o_node,
            oh.make_node("Shape", [name], [shape], name=shape),
            oh.make_node("Shape", [shape], [rank_v], name=rank_v),
            oh.make_node("Sub", [rank_v, one], [rest], name=rest),
            oh.make_node("ConstantOfShape", [rest], [ones], name=ones,
                         value=oh.make_tensor("one", INT64, [1], [1])),
            oh.make_node("Concat", [count, ones], [reps], name=reps, axis=0),
            oh.make_node("Tile", [name, reps], [tiled], name=tiled)]


def _statistics(prepared: PreparedSource, samples: int, keep_samples: bool,
                mapping: dict[str, str], fresh: NameMaker) -> list[onnx.NodeProto]:
    """Reshape each folded output to [N, B, ...] and reduce it over the samples (two passes
    in double: the mean, then the squared deviations from it). Few nodes: at one request each
    costs about as much as its arithmetic."""
    n_samples, n_node = constant(fresh, "mc/samples", INT64, [samples])
    axis0, a_node = constant(fresh, "mc/axis0", INT64, [0])
    n_double, d_node = constant(fresh, "mc/samples_double", DOUBLE, [float(samples)], [])
    tail = [n_node, a_node, d_node]
    consts = None
    if any(o.classification for o in prepared.outputs):
        consts, nodes = classification.constants(fresh, samples)
        tail += nodes
    for output in prepared.outputs:
        y = mapping.get(output.value, output.value)
        base = output.source
        stacked, shape_nodes, reshape_nodes = stacked_samples(output, y, n_samples, fresh)
        stacked_d, var, std_d = (fresh(f"{base}/mc_{k}") for k in
                                 ("stacked_double", "variance", "std_double"))
        mean_d, m2, moments = mean_and_m2(base, stacked_d, axis0, n_double, fresh)
        tail += [
            *shape_nodes, *reshape_nodes,
            oh.make_node("Cast", [stacked], [stacked_d], name=stacked_d, to=DOUBLE),
            *moments,
            oh.make_node("Div", [m2, n_double], [var], name=var),
            oh.make_node("Sqrt", [var], [std_d], name=std_d),
            cast_to(mean_d, output.elem_type, output.mean, output.mean),
            cast_to(std_d, output.elem_type, output.std, output.std),
        ]
        if output.classification and consts is not None:
            tail += _classification(prepared, output, stacked, axis0, consts, fresh)
        if keep_samples:
            tail.append(oh.make_node("Identity", [stacked], [output.samples],
                                     name=output.samples))
    return tail


def _classification(prepared: PreparedSource, output: SampledOutput, stacked: str, axis0: str,
                    consts: classification.Constants, fresh: NameMaker) -> list[onnx.NodeProto]:
    """Entropies and mutual information of ``stacked`` ([N, B, ..., C]) over its samples."""
    base = output.source
    p, nodes = classification.probabilities(stacked, prepared.logits, base, fresh)
    h, entropy_nodes = classification.entropy(p, base, consts, fresh)
    sum_p, sum_h = fresh(f"{base}/mc_sum_probabilities"), fresh(f"{base}/mc_sum_entropy")
    return [*nodes, *entropy_nodes,
            oh.make_node("ReduceSum", [p, axis0], [sum_p], name=sum_p, keepdims=0),
            oh.make_node("ReduceSum", [h, axis0], [sum_h], name=sum_h, keepdims=0),
            *classification.statistics(output, sum_p, sum_h, consts, fresh)]
