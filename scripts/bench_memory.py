#!/usr/bin/env python
"""Peak memory of ``inspect``, ``strip`` and ``rewrite`` next to the size of the model file.

Builds a model with N MB of *embedded* float weights (``raw_data``, random
values, split over a few initializers and one large ``Constant``) around one
random-mask site (``RandomUniformLike → GreaterOrEqual → Cast → Mul → Mul``)
and one ONNX ``Dropout``. The file is written field by field, so this script
never holds the weights in memory. Then each CLI command runs in a fresh
process that reports its own peak RSS (``VmHWM`` from ``/proc/self/status``,
as ``tests/test_modelio_large.py`` does; ``ru_maxrss`` would carry the
parent's peak over), and the ratio to the file size is printed. The goal
(issue 12): ``inspect`` ≤ 0.5×, ``strip`` / ``rewrite`` ≤ 1.5×.

    .venv/bin/python scripts/bench_memory.py [--mb 381] [--mb 734] [--keep DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto
from onnx import helper as oh

#: Elements of the activation the site works on (small: the weights are what is large).
WIDTH = 256
GOALS = {"inspect": 0.5, "strip": 1.5, "rewrite": 1.5}

_RUNNER = """
import json, sys
from spatialdrop_onnx.cli import main
code = main(sys.argv[1:])
with open("/proc/self/status") as status:
    peak_kb = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
print(json.dumps({"code": code, "peak_mb": peak_kb / 1024}))
"""


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, length: int) -> bytes:
    """The header (tag and length) of a length-delimited field."""
    return _varint(number << 3 | 2) + _varint(length)


def _raw_tensor_header(name: str, elements: int) -> bytes:
    """A TensorProto's bytes up to its ``raw_data`` payload (which follows)."""
    meta = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=[elements // WIDTH, WIDTH])
    return meta.SerializeToString() + _field(9, elements * 4)


def _write_weights(handle, elements: int, rng: np.random.Generator) -> str:  # noqa: ANN001
    """Write ``elements`` random float32 values; return their SHA-256."""
    digest = hashlib.sha256()
    left = elements
    while left:
        count = min(left, 1 << 22)
        chunk = rng.standard_normal(count, dtype=np.float32).tobytes()
        digest.update(chunk)
        handle.write(chunk)
        left -= count
    return digest.hexdigest()


def build_model(path: Path, megabytes: float, tensors: int = 4, seed: int = 0,
                opset: int = 17) -> dict[str, str]:
    """Write the benchmark model to ``path``; return ``{weight name: SHA-256 of its bytes}``.

    ``tensors - 1`` large initializers ``w0..`` feed an Add/Mul chain; the last
    share of the weights is a ``Constant`` node's ``value``. Every weight is a
    ``[n, WIDTH]`` float tensor; the activation is ``[1, WIDTH]``.
    """
    rng = np.random.default_rng(seed)
    total = int(megabytes * (1 << 20)) // 4 // WIDTH * WIDTH
    per = total // tensors // WIDTH * WIDTH
    sizes = [per] * (tensors - 1) + [total - per * (tensors - 1)]
    names = [f"w{i}" for i in range(tensors - 1)] + ["big_constant"]
    nodes = [oh.make_node("Constant", [], ["big_constant"], name="big_constant_node",
                          value=TensorProto(name="big_constant"))]  # value filled below
    current = "x"
    for i, name in enumerate(names):
        nodes.append(oh.make_node("ReduceMean", [name], [f"{name}_mean"], axes=[0],
                                  keepdims=1))
        nodes.append(oh.make_node("Add" if i % 2 else "Mul", [current, f"{name}_mean"],
                                  [f"h{i}"]))
        current = f"h{i}"
    nodes += [
        oh.make_node("Dropout", [current, "ratio", "no"], ["d"], name="dropout"),
        oh.make_node("RandomUniformLike", ["d"], ["u"], name="random"),
        oh.make_node("GreaterOrEqual", ["u", "ratio"], ["keep"]),
        oh.make_node("Cast", ["keep"], ["mask"], to=TensorProto.FLOAT),
        oh.make_node("Mul", ["mask", "scale"], ["mask_scaled"]),
        oh.make_node("Mul", ["d", "mask_scaled"], ["y"]),
    ]
    small = [oh.make_tensor("ratio", TensorProto.FLOAT, [], [0.25]),
             oh.make_tensor("scale", TensorProto.FLOAT, [], [1 / 0.75]),
             oh.make_tensor("no", TensorProto.BOOL, [], [False])]
    graph = oh.make_graph(nodes, "memory",
                          [oh.make_tensor_value_info("x", TensorProto.FLOAT, [1, WIDTH])],
                          [oh.make_tensor_value_info("y", TensorProto.FLOAT, [1, WIDTH])],
                          small)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)])
    # The large tensors are appended to the serialized graph as fields: a Constant
    # node (its value attribute with raw_data) and initializers (repeated fields may
    # come in any order, and the node list keeps its order).
    del model.graph.node[0]
    graph_bytes = model.graph.SerializeToString()
    model.ClearField("graph")
    constant_node = nodes[0]
    del constant_node.attribute[:]
    node_head = constant_node.SerializeToString()
    attr_head = onnx.AttributeProto(name="value", type=onnx.AttributeProto.TENSOR
                                    ).SerializeToString()
    tensor_heads = [_raw_tensor_header(name, size) for name, size in zip(names, sizes,
                                                                          strict=True)]
    tensor_lengths = [len(h) + size * 4 for h, size in zip(tensor_heads, sizes, strict=True)]
    attr_length = len(attr_head) + len(_field(5, tensor_lengths[-1])) + tensor_lengths[-1]
    node_length = len(node_head) + len(_field(5, attr_length)) + attr_length
    # The Constant goes first: the graph's node field 1 is read in order, so it is
    # prepended as a node field ahead of the other nodes.
    graph_length = (len(_field(1, node_length)) + node_length + len(graph_bytes)
                    + sum(len(_field(5, n)) + n for n in tensor_lengths[:-1]))
    digests = {}
    with open(path, "wb") as handle:
        handle.write(model.SerializeToString())
        handle.write(_field(7, graph_length))
        handle.write(_field(1, node_length) + node_head + _field(5, attr_length) + attr_head
                     + _field(5, tensor_lengths[-1]) + tensor_heads[-1])
        digests[names[-1]] = _write_weights(handle, sizes[-1], rng)
        handle.write(graph_bytes)
        for name, head, size, length in zip(names[:-1], tensor_heads, sizes, tensor_lengths,
                                            strict=False):
            handle.write(_field(5, length) + head)
            digests[name] = _write_weights(handle, size, rng)
    return digests


def run_cli(*args: str) -> dict:
    """Run the CLI in a fresh process; ``{"code", "peak_mb", "seconds"}``."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _RUNNER, *args], capture_output=True,
                          text=True, check=False, timeout=600)
    if done.returncode != 0 or not done.stdout.strip():
        raise RuntimeError(f"{args[0]} failed ({done.returncode}): {done.stderr.strip()}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["seconds"] = time.perf_counter() - start
    return result


def measure(path: Path) -> dict[str, dict]:
    """Peak RSS of each command on ``path`` (outputs next to it)."""
    results = {"inspect": run_cli("inspect", "-q", str(path))}
    for command in ("strip", "rewrite"):
        out = path.with_name(f"{path.stem}.{command}.onnx")
        results[command] = run_cli(command, "-q", str(path), "-o", str(out))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, action="append",
                        help="MB of embedded weights (repeatable; default 381)")
    parser.add_argument("--keep", type=Path, help="build the models in this folder and keep them")
    args = parser.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="bench_memory_"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        for megabytes in args.mb or [381.0]:
            path = folder / f"embedded_{megabytes:g}mb.onnx"
            build_model(path, megabytes)
            size_mb = path.stat().st_size / (1 << 20)
            print(f"{path.name}: {size_mb:.1f} MB", flush=True)
            for command, result in measure(path).items():
                ratio = result["peak_mb"] / size_mb
                verdict = "ok" if ratio <= GOALS[command] else f"goal {GOALS[command]}x"
                print(f"  {command:8s} peak RSS {result['peak_mb']:7.1f} MB  "
                      f"{ratio:4.2f}x the file  ({verdict}; exit {result['code']}, "
                      f"{result['seconds']:.1f} s)", flush=True)
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
