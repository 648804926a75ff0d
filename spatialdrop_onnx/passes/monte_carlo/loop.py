"""The loop strategy: the model as the body of a ``Loop`` that runs N times.

The body is the stochastic part of the source graph (:mod:`.stochastic`); the
deterministic prefix runs once before the loop, and the body reads its values,
the inputs, the initializers and the constant switch from the outer scope. Then
Welford's update in double for each sampled output ``y``, with ``k`` the
1-based iteration::

    delta = y - mean;  mean += delta / k;  m2 += delta * (y - mean)

After the loop, ``y_mean = mean`` and ``y_std = sqrt(m2 / N)`` (population
deviation), each rounded once to ``y``'s type. Memory is one sample's
activations plus two double accumulators per output, whatever N; with
``keep_samples`` the body also emits ``y`` as a scan output ([N, *y]). A
classification output adds two float accumulators, the sums of the sample's
probabilities and of its entropy (:mod:`.classification`).

The accumulators start as zeros of shape [1]*rank (rank from the output's
declared type) and broadcast to ``y``'s shape in the first iteration: the rank
stays fixed, which OpenVINO's Loop needs. With the rank unknown they start as
scalars (onnxruntime and onnx.reference accept the change of rank). The
condition input is an explicit true: onnx.reference runs no iteration when it
is omitted.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx
from onnx import helper as oh

from ...graph import NameMaker, names_read
from . import classification
from .source import PreparedSource, SampledOutput
from .stats import BOOL, DOUBLE, FLOAT, INT64, cast_to, constant, output_infos
from .stochastic import partition


def _state_info(name: str, rank: int | None, elem_type: int = DOUBLE) -> onnx.ValueInfoProto:
    if rank is None:
        return oh.make_tensor_value_info(name, elem_type, None)
    return oh.make_tensor_value_info(name, elem_type, [None] * rank)


def _rank(output: SampledOutput) -> int | None:
    dims = output.dims
    return None if dims is None else len(dims)


def _take_body_only_initializers(graph: onnx.GraphProto, body_nodes: list[onnx.NodeProto],
                                 outer_nodes: list[onnx.NodeProto]) -> list[onnx.TensorProto]:
    """Remove from ``graph`` and return the initializers that only ``body_nodes`` read.

    With its weights in the outer scope, onnxruntime ran the body's convolutions in the
    plain layout, without the constant-weight optimisations it applies to the same nodes
    in a main graph (the CNN of ``bench --mc``: 1.0x the N calls; 1.5x with its weights
    in the body). Moved, not copied, so the model does not grow. An initializer that is
    also a graph input stays outside (a caller may override it).
    """
    read_in_body = {name for node in body_nodes for name in names_read(node)}
    read_outside = {name for node in outer_nodes for name in names_read(node)}
    read_outside.update(i.name for i in graph.input)
    moving = [init for init in graph.initializer
              if init.name in read_in_body and init.name not in read_outside]
    if moving:
        moved = {init.name for init in moving}
        kept = [init for init in graph.initializer if init.name not in moved]
        del graph.initializer[:]
        graph.initializer.extend(kept)
    return moving


@dataclass
class _State:
    """The Loop's share of one classification output: two float accumulators."""

    head: list[onnx.NodeProto]  # their initial zeros
    initial: list[str]
    body: list[onnx.NodeProto]
    body_inputs: list[onnx.ValueInfoProto]
    body_outputs: list[onnx.ValueInfoProto]
    finals: list[str]  # the sums after the loop: probabilities, entropies


def _classification_state(prepared: PreparedSource, output: SampledOutput, rank: int | None,
                          consts: classification.Constants, fresh: NameMaker) -> _State:
    """Sum of the probabilities (rank of ``y``) and of the entropies (one axis fewer)."""
    base = output.source
    h_rank = None if rank is None else rank - 1
    p_zeros, p_node = constant(fresh, f"{base}/mc_zeros_float", FLOAT, [0.0],
                               [] if rank is None else [1] * rank)
    h_zeros, h_node = constant(fresh, f"{base}/mc_zeros_entropy", FLOAT, [0.0],
                               [] if h_rank is None else [1] * h_rank)
    p, nodes = classification.probabilities(output.value, prepared.logits, base, fresh)
    h, entropy_nodes = classification.entropy(p, base, consts, fresh)
    names = [fresh(f"{base}/mc_{k}") for k in ("sum_p_in", "sum_h_in", "sum_p_out", "sum_h_out")]
    p_in, h_in, p_out, h_out = names
    body = [*nodes, *entropy_nodes,
            oh.make_node("Add", [p_in, p], [p_out], name=p_out),
            oh.make_node("Add", [h_in, h], [h_out], name=h_out)]
    return _State(
        head=[p_node, h_node], initial=[p_zeros, h_zeros], body=body,
        body_inputs=[_state_info(p_in, rank, FLOAT), _state_info(h_in, h_rank, FLOAT)],
        body_outputs=[_state_info(p_out, rank, FLOAT), _state_info(h_out, h_rank, FLOAT)],
        finals=[fresh(f"{base}/mc_sum_probabilities"), fresh(f"{base}/mc_sum_entropy")])


def build_loop(prepared: PreparedSource, samples: int, keep_samples: bool) -> onnx.ModelProto:
    """The Monte-Carlo model as a Loop (``prepared.model`` is changed and returned)."""
    model, fresh = prepared.model, prepared.fresh
    graph = model.graph
    # The deterministic prefix (the switch's Constant included) runs once, outside: the
    # body reads its values from the outer scope.
    split = partition(model)
    nodes = list(graph.node)
    outer = [nodes[i] for i in split.deterministic]
    inner = [nodes[i] for i in split.stochastic]
    inner_values = {o for n in inner for o in n.output}

    n_samples, n_node = constant(fresh, "mc/samples", INT64, [samples], [])
    n_double, d_node = constant(fresh, "mc/samples_double", DOUBLE, [float(samples)], [])
    cond, c_node = constant(fresh, "mc/run", BOOL, [True], [])
    one, o_node = constant(fresh, "mc/one", INT64, [1], [])
    head = [*outer, n_node, d_node, c_node, o_node]

    iteration, cond_in, cond_out = fresh("mc/iteration"), fresh("mc/cond_in"), fresh("mc/cond")
    step, k = fresh("mc/step"), fresh("mc/k")
    body_nodes = [*inner,
                  oh.make_node("Add", [iteration, one], [step], name=step),
                  oh.make_node("Cast", [step], [k], name=k, to=DOUBLE),
                  oh.make_node("Identity", [cond_in], [cond_out], name=cond_out)]
    body_inputs = [oh.make_tensor_value_info(iteration, INT64, []),
                   oh.make_tensor_value_info(cond_in, BOOL, [])]
    body_outputs = [oh.make_tensor_value_info(cond_out, BOOL, [])]
    loop_inputs = [n_samples, cond]
    loop_states, loop_scans, finals = [], [], []
    scan_outputs = []
    consts = None
    if any(o.classification for o in prepared.outputs):
        consts, nodes = classification.constants(fresh, samples)
        head += nodes
    for output in prepared.outputs:
        base, rank = output.source, _rank(output)
        init, i_node = constant(fresh, f"{base}/mc_zeros", DOUBLE, [0.0],
                                [] if rank is None else [1] * rank)
        head.append(i_node)
        mean_in, m2_in, mean_out, m2_out = (fresh(f"{base}/mc_{k_}") for k_ in
                                            ("mean_in", "m2_in", "mean_out", "m2_out"))
        y_d, delta, step_mean, delta2, product = (fresh(f"{base}/mc_{k_}") for k_ in
                                                  ("double", "delta", "step", "delta_new",
                                                   "product"))
        body_nodes += [
            oh.make_node("Cast", [output.value], [y_d], name=y_d, to=DOUBLE),
            oh.make_node("Sub", [y_d, mean_in], [delta], name=delta),
            oh.make_node("Div", [delta, k], [step_mean], name=step_mean),
            oh.make_node("Add", [mean_in, step_mean], [mean_out], name=mean_out),
            oh.make_node("Sub", [y_d, mean_out], [delta2], name=delta2),
            oh.make_node("Mul", [delta, delta2], [product], name=product),
            oh.make_node("Add", [m2_in, product], [m2_out], name=m2_out),
        ]
        body_inputs += [_state_info(mean_in, rank), _state_info(m2_in, rank)]
        body_outputs += [_state_info(mean_out, rank), _state_info(m2_out, rank)]
        loop_inputs += [init, init]
        mean_final, m2_final = fresh(f"{base}/mc_mean_double"), fresh(f"{base}/mc_m2")
        loop_states += [mean_final, m2_final]
        variance, std_d = fresh(f"{base}/mc_variance"), fresh(f"{base}/mc_std_double")
        finals += [
            oh.make_node("Div", [m2_final, n_double], [variance], name=variance),
            oh.make_node("Sqrt", [variance], [std_d], name=std_d),
            cast_to(mean_final, output.elem_type, output.mean, output.mean),
            cast_to(std_d, output.elem_type, output.std, output.std),
        ]
        if output.classification and consts is not None:
            state = _classification_state(prepared, output, rank, consts, fresh)
            head += state.head
            body_nodes += state.body
            body_inputs += state.body_inputs
            body_outputs += state.body_outputs
            loop_inputs += state.initial
            loop_states += state.finals
            finals += classification.statistics(output, *state.finals, consts, fresh)
        if keep_samples:
            sample = fresh(f"{base}/mc_sample")
            body_nodes.append(oh.make_node("Identity", [output.value], [sample], name=sample))
            scan = onnx.ValueInfoProto()
            scan.CopyFrom(output.info)
            scan.name = sample
            scan_outputs.append(scan)
            loop_scans.append(output.samples)
    body_outputs += scan_outputs
    body = oh.make_graph(body_nodes, "monte_carlo_sample", body_inputs, body_outputs,
                         initializer=_take_body_only_initializers(graph, body_nodes,
                                                                  [*head, *finals]),
                         value_info=[i for i in graph.value_info if i.name in inner_values])
    outer_info = [i for i in graph.value_info if i.name not in inner_values]
    loop_name = fresh("mc/loop")
    loop = oh.make_node("Loop", loop_inputs, [*loop_states, *loop_scans], name=loop_name,
                        body=body)
    del graph.value_info[:]
    graph.value_info.extend(outer_info)
    del graph.node[:]
    graph.node.extend([*head, loop, *finals])
    del graph.output[:]
    for output in prepared.outputs:
        graph.output.extend(output_infos(output, samples, keep_samples))
    return model
