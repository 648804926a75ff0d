"""Classification uncertainty: entropies and mutual information of the N samples, in-graph.

For an output ``y`` whose last axis holds class probabilities (or logits,
with ``logits``: a softmax over the last axis comes first), with ``p_s`` the
probability vector of sample s and ``p̄`` their mean::

    y_entropy              H(p̄)            = -sum_c p̄_c log p̄_c      (predictive entropy)
    y_expected_entropy     mean_s H(p_s)                              (aleatoric part)
    y_mutual_information   H(p̄) - mean_s H(p_s)                      (BALD, epistemic part)

reduced over the last axis, natural log. ``0 log 0`` is 0: the log reads
``max(p, tiny)`` (the smallest normal float), so a probability of exactly 0
adds ``0 * log(tiny) = 0`` instead of ``0 * -inf = NaN``. The mutual
information is clamped at 0 (it is >= 0 by Jensen's inequality; rounding can
make the difference a few ulp negative).

Only ops every runtime of the README table runs: the arithmetic is in float
(no double tensors, which some runtimes do not run), ``ReduceSum`` takes its
axes as an input (opset >= 13) and there is no ``If``. Each strategy supplies
the sums over the samples: the batch fold with ``ReduceSum`` over axis 0, the
Loop with two float accumulators (the sum of ``p_s`` and of ``H(p_s)``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper as oh

from ...graph import NameMaker
from .source import SampledOutput
from .stats import FLOAT, INT64, cast_to, constant

#: The smallest normal float32: log(max(p, TINY)) is finite, so 0 * log(...) is 0.
TINY = float(np.finfo(np.float32).tiny)


@dataclass(frozen=True)
class Constants:
    """Shared constant names: ``tiny``, ``zero`` (float scalars), ``last`` (axes [-1]),
    ``samples`` (N as a float scalar)."""

    tiny: str
    zero: str
    last: str
    samples: str


def constants(fresh: NameMaker, samples: int) -> tuple[Constants, list[onnx.NodeProto]]:
    """The constants the classification nodes read, and the nodes that define them."""
    tiny, t_node = constant(fresh, "mc/tiny", FLOAT, [TINY], [])
    zero, z_node = constant(fresh, "mc/zero_float", FLOAT, [0.0], [])
    last, l_node = constant(fresh, "mc/last_axis", INT64, [-1])
    n, n_node = constant(fresh, "mc/samples_float", FLOAT, [float(samples)], [])
    return Constants(tiny, zero, last, n), [t_node, z_node, l_node, n_node]


def probabilities(value: str, logits: bool, base: str, fresh: NameMaker
                  ) -> tuple[str, list[onnx.NodeProto]]:
    """``value`` as float probabilities (softmax over the last axis first for logits)."""
    cast = fresh(f"{base}/mc_float")
    nodes = [oh.make_node("Cast", [value], [cast], name=cast, to=FLOAT)]
    if not logits:
        return cast, nodes
    probs = fresh(f"{base}/mc_softmax")
    nodes.append(oh.make_node("Softmax", [cast], [probs], name=probs, axis=-1))
    return probs, nodes


def entropy(p: str, base: str, consts: Constants, fresh: NameMaker
            ) -> tuple[str, list[onnx.NodeProto]]:
    """``-sum(p * log(max(p, tiny)))`` over the last axis (the axis dropped)."""
    floor, log, product, total, out = (fresh(f"{base}/mc_{k}") for k in
                                       ("p_floor", "log_p", "p_log_p", "sum_p_log_p",
                                        "entropy"))
    return out, [
        oh.make_node("Max", [p, consts.tiny], [floor], name=floor),
        oh.make_node("Log", [floor], [log], name=log),
        oh.make_node("Mul", [p, log], [product], name=product),
        oh.make_node("ReduceSum", [product, consts.last], [total], name=total, keepdims=0),
        oh.make_node("Neg", [total], [out], name=out),
    ]


def statistics(output: SampledOutput, sum_p: str, sum_h: str, consts: Constants,
               fresh: NameMaker) -> list[onnx.NodeProto]:
    """The three outputs from the sums over the samples of ``p_s`` and of ``H(p_s)``."""
    assert output.classification is not None
    entropy_out, expected_out, information_out = output.classification
    base = output.source
    mean_p, expected, difference, information = (
        fresh(f"{base}/mc_{k}") for k in ("mean_probabilities", "expected_entropy_float",
                                          "entropy_difference", "mutual_information_float"))
    predictive, nodes = entropy(mean_p, f"{base}/mc_mean", consts, fresh)
    return [
        oh.make_node("Div", [sum_p, consts.samples], [mean_p], name=mean_p),
        *nodes,
        oh.make_node("Div", [sum_h, consts.samples], [expected], name=expected),
        oh.make_node("Sub", [predictive, expected], [difference], name=difference),
        oh.make_node("Max", [difference, consts.zero], [information], name=information),
        cast_to(predictive, output.elem_type, entropy_out, entropy_out),
        cast_to(expected, output.elem_type, expected_out, expected_out),
        cast_to(information, output.elem_type, information_out, information_out),
    ]
