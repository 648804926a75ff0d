#!/usr/bin/env python
"""Benchmark ``spatialdrop-onnx strip`` end to end through the CLI.

Builds a chain model with N dropout sites (3 nodes per site: Add, Relu,
Dropout-13 with ratio/training_mode inputs; every 10th site also has a mask
output nobody reads), so 30,000 sites make a 90,000-node model. Then, in one
run, times (wall clock, each in a fresh process, best of ``--repeat``):

* ``spatialdrop-onnx strip IN -o OUT`` (our pass, including Python start-up),
* a plain ``onnx.load`` + ``onnx.save`` of the same model (the floor),
* optionally ``onnxslim IN OUT`` (``--onnxslim``; it takes about a minute).

``--scale 10`` repeats the measurement with 10x the sites and prints the
ratio (the goal: 10x the nodes costs at most 12x the time).

    .venv/bin/python scripts/bench_strip.py --sites 30000 --scale 10 [--onnxslim]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import onnx
from onnx import TensorProto
from onnx import helper as oh


def build_model(sites: int, opset: int = 17) -> onnx.ModelProto:
    """x → (Add bias_i → Relu → Dropout) × sites → y."""
    nodes = []
    initializers = [
        oh.make_tensor("ratio", TensorProto.FLOAT, [], [0.1]),
        oh.make_tensor("training", TensorProto.BOOL, [], [False]),
    ]
    previous = "x"
    for i in range(sites):
        nodes.append(oh.make_node("Add", [previous, f"b{i}"], [f"a{i}"], name=f"add{i}"))
        nodes.append(oh.make_node("Relu", [f"a{i}"], [f"r{i}"], name=f"relu{i}"))
        outputs = [f"d{i}", f"m{i}"] if i % 10 == 0 else [f"d{i}"]
        nodes.append(oh.make_node("Dropout", [f"r{i}", "ratio", "training"], outputs,
                                  name=f"drop{i}"))
        initializers.append(oh.make_tensor(f"b{i}", TensorProto.FLOAT, [4], [0.0, 0.1, 0.2, 0.3]))
        previous = f"d{i}"
    graph = oh.make_graph(
        nodes, "bench",
        [oh.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [oh.make_tensor_value_info(previous, TensorProto.FLOAT, ["N", 4])],
        initializers)
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)])


def timed(command: list[str], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        best = min(best, time.perf_counter() - start)
    return best


def bench(sites: int, folder: Path, repeat: int, with_onnxslim: bool) -> dict[str, float]:
    src = folder / f"bench_{sites}.onnx"
    start = time.perf_counter()
    onnx.save(build_model(sites), src)
    print(f"built {sites} sites ({3 * sites} nodes, {src.stat().st_size / 1e6:.1f} MB) "
          f"in {time.perf_counter() - start:.1f} s", flush=True)
    out = folder / f"bench_{sites}.stripped.onnx"
    results = {
        "strip (CLI)": timed([sys.executable, "-m", "spatialdrop_onnx", "strip", "-q",
                              str(src), "-o", str(out)], repeat),
        "onnx load+save": timed([sys.executable, "-c",
                                 "import onnx,sys; onnx.save(onnx.load(sys.argv[1]), sys.argv[2])",
                                 str(src), str(folder / "plain.onnx")], repeat),
    }
    stripped = onnx.load(out)
    left = sum(1 for n in stripped.graph.node if n.op_type == "Dropout")
    # Two nodes per site remain, plus the Identity that keeps the output name y.
    assert left == 0 and len(stripped.graph.node) == 2 * sites + 1, len(stripped.graph.node)
    if with_onnxslim:
        slim = shutil.which("onnxslim") or str(Path(sys.executable).parent / "onnxslim")
        results["onnxslim"] = timed([slim, str(src), str(folder / "slim.onnx")], 1)
    for label, seconds in results.items():
        print(f"  {label:<16} {seconds:8.2f} s", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=30_000)
    parser.add_argument("--scale", type=int, default=10, help="also run sites*scale (0: skip)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--onnxslim", action="store_true", help="also time onnxslim")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        base = bench(args.sites, folder, args.repeat, args.onnxslim)
        if args.scale:
            big = bench(args.sites * args.scale, folder, max(1, args.repeat - 2), False)
            ratio = big["strip (CLI)"] / base["strip (CLI)"]
            print(f"{args.scale}x the nodes: strip took {ratio:.1f}x the time "
                  f"(goal <= {1.2 * args.scale:.0f}x)")


if __name__ == "__main__":
    main()
