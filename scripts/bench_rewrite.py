#!/usr/bin/env python
"""Benchmark ``rewrite`` on large graphs: many sites, and many nodes with few sites.

Two synthetic models of PyTorch-dynamo ``Dropout2d`` sites (``ConstantOfShape →
RandomUniformLike → Less → Cast → Div → Mul``, noise shape ``Concat(Shape(x)[0:1],
[C], [1], [1])``) on an NCHW chain:

* ``sites``: a chain of N sites (7 nodes each);
* ``sparse``: a chain of M plain nodes (``Add``/``Relu``) with K sites spread along it.

For each, the rewrite is timed in this process after a warm-up (the pass only: no
imports, no file I/O), best of ``--repeat``; ``--scale`` repeats with that many times
the size and prints the ratio (the goal: 10x the model costs at most 12x the time).

    .venv/bin/python scripts/bench_rewrite.py [--sites 2000] [--nodes 100000 --sparse-sites 100]
                                              [--scale 10] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import time

import onnx
from onnx import TensorProto
from onnx import helper as oh

import spatialdrop_onnx as sd
from spatialdrop_onnx.cli.process import command_process

CHANNELS = 4


def _site(prefix: str, data: str, out: str, batch_source: str) -> list[onnx.NodeProto]:
    return [
        oh.make_node("Shape", [batch_source], [f"{prefix}_b"], start=0, end=1),
        oh.make_node("Concat", [f"{prefix}_b", "c_ch", "c_one", "c_one"], [f"{prefix}_n"],
                     axis=0),
        oh.make_node("ConstantOfShape", [f"{prefix}_n"], [f"{prefix}_z"]),
        oh.make_node("RandomUniformLike", [f"{prefix}_z"], [f"{prefix}_u"]),
        oh.make_node("Less", [f"{prefix}_u", "keep"], [f"{prefix}_k"]),
        oh.make_node("Cast", [f"{prefix}_k"], [f"{prefix}_m"], to=TensorProto.FLOAT),
        oh.make_node("Div", [f"{prefix}_m", "keep"], [f"{prefix}_s"]),
        oh.make_node("Mul", [data, f"{prefix}_s"], [out]),
    ]


def build(plain_nodes: int, sites: int) -> onnx.ModelProto:
    """An NCHW chain of ``plain_nodes`` Add/Relu nodes with ``sites`` dropout sites spread in."""
    nodes: list[onnx.NodeProto] = []
    every = max(1, plain_nodes // max(sites, 1)) if plain_nodes else 0
    previous, placed, count = "x", 0, 0
    total = max(plain_nodes, 1) if plain_nodes else 0
    for i in range(max(total, sites)):
        if i < plain_nodes:
            op = "Relu" if i % 2 else "Add"
            inputs = [previous] if op == "Relu" else [previous, "bias"]
            nodes.append(oh.make_node(op, inputs, [f"v{i}"]))
            previous = f"v{i}"
        if placed < sites and (plain_nodes == 0 or (every and i % every == every - 1)):
            nodes.extend(_site(f"s{placed}", previous, f"d{placed}", "x"))
            previous = f"d{placed}"
            placed += 1
        count = i
    del count
    initializers = [
        oh.make_tensor("bias", TensorProto.FLOAT, [1], [0.1]),
        oh.make_tensor("keep", TensorProto.FLOAT, [], [0.75]),
        oh.make_tensor("c_ch", TensorProto.INT64, [1], [CHANNELS]),
        oh.make_tensor("c_one", TensorProto.INT64, [1], [1]),
    ]
    graph = oh.make_graph(
        nodes, "bench",
        [oh.make_tensor_value_info("x", TensorProto.FLOAT, ["N", CHANNELS, 8, 8])],
        [oh.make_tensor_value_info(previous, TensorProto.FLOAT, ["N", CHANNELS, 8, 8])],
        initializers)
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18)])


def time_rewrite(model: onnx.ModelProto, repeat: int) -> tuple[float, int]:
    best, converted = float("inf"), 0
    for _ in range(repeat):
        start = time.perf_counter()
        with command_process():  # as the CLI runs it (collector threshold, isolated checks)
            result = sd.rewrite(model)
        best = min(best, time.perf_counter() - start)
        converted = len(result.report.converted)
    return best, converted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=2000)
    parser.add_argument("--nodes", type=int, default=100_000)
    parser.add_argument("--sparse-sites", type=int, default=100)
    parser.add_argument("--scale", type=int, default=0, help="also run at this many times the size")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    time_rewrite(build(0, 2), 1)  # imports and first-use costs are not the pass's
    rows = []
    cases = (("sites", 0, args.sites), ("sparse", args.nodes, args.sparse_sites))
    for label, plain, sites in cases:
        model = build(plain, sites)
        seconds, converted = time_rewrite(model, args.repeat)
        row = {"model": label, "nodes": len(model.graph.node), "sites": sites,
               "converted": converted, "seconds": round(seconds, 3)}
        if args.scale:
            big = build(plain * args.scale, sites * args.scale)
            big_seconds, big_converted = time_rewrite(big, 1)
            row.update({"scaled_nodes": len(big.graph.node),
                        "scaled_seconds": round(big_seconds, 3),
                        "scaled_converted": big_converted,
                        "time_ratio": round(big_seconds / seconds, 2)})
        rows.append(row)
        if not args.json:
            print(row, flush=True)
    if args.json:
        print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
