"""Several GB of external data (sparse files): rewrite and strip never read the weights.

Each CLI run happens in a child process that reports its own peak RSS;
the goal is at most 300 MB whatever the size of the weights.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto
from onnx import helper as oh

from spatialdrop_onnx import modelio

ELEMENTS = 350_000_000  # 1.4 GB of float32 per tensor
TENSORS = 3             # 4.2 GB in all
PEAK_LIMIT_MB = 300

# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the forking parent (pytest,
# with TensorFlow loaded) across exec, while VmHWM belongs to this process's memory.
_RUNNER = """
import json, sys
from spatialdrop_onnx.cli import main
code = main(sys.argv[1:])
with open("/proc/self/status") as status:
    peak_kb = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
print(json.dumps({"code": code, "peak_mb": peak_kb / 1024}))
"""


def _big_model(folder: Path) -> Path:
    inits = []
    for i in range(TENSORS):
        name = f"w{i}.bin"
        with open(folder / name, "wb") as handle:
            handle.truncate(ELEMENTS * 4)  # a hole: no disk, no page cache
        tensor = TensorProto(name=f"w{i}", data_type=TensorProto.FLOAT, dims=[ELEMENTS])
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", name), ("offset", "0"), ("length", str(ELEMENTS * 4))):
            tensor.external_data.add(key=key, value=value)
        inits.append(tensor)
    inits += [oh.make_tensor("r", TensorProto.FLOAT, [], [0.25]),
              oh.make_tensor("s", TensorProto.FLOAT, [], [1 / 0.75])]
    nodes = [
        oh.make_node("Add", ["x", "w0"], ["a"]),
        oh.make_node("Mul", ["a", "w1"], ["b"]),
        oh.make_node("Sub", ["b", "w2"], ["c"]),
        oh.make_node("Dropout", ["c"], ["d"]),
        # A random-mask site, so rewrite and strip go through the onnx_ir rules.
        oh.make_node("RandomUniformLike", ["d"], ["u"]),
        oh.make_node("GreaterOrEqual", ["u", "r"], ["keep"]),
        oh.make_node("Cast", ["keep"], ["m"], to=TensorProto.FLOAT),
        oh.make_node("Mul", ["m", "s"], ["ms"]),
        oh.make_node("Mul", ["d", "ms"], ["y"]),
    ]
    graph = oh.make_graph(nodes, "big",
                          [oh.make_tensor_value_info("x", TensorProto.FLOAT, [ELEMENTS])],
                          [oh.make_tensor_value_info("y", TensorProto.FLOAT, [ELEMENTS])], inits)
    path = folder / "big.onnx"
    onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18)]), path)
    return path


def _cli(*args: str) -> dict:
    done = subprocess.run([sys.executable, "-c", _RUNNER, *args], capture_output=True,
                          text=True, check=False, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _big_model(tmp_path_factory.mktemp("big"))


@pytest.mark.parametrize("command", ["rewrite", "strip"])
def test_large_external_data_same_folder(big: Path, command: str) -> None:
    out = big.parent / f"{command}.onnx"
    result = _cli(command, str(big), "-o", str(out))
    assert result["code"] == 0
    assert result["peak_mb"] <= PEAK_LIMIT_MB, result
    loaded = modelio.load_model(out)  # validates every reference against the folder
    model = loaded.model
    locations = [file.location for file in loaded.data_files]
    assert locations == ["w0.bin", "w1.bin", "w2.bin"]  # referenced, not copied
    ops = [n.op_type for n in model.graph.node]
    if command == "strip":
        assert ops == ["Add", "Mul", "Sub", "Identity"]
    else:
        assert "RandomUniformLike" not in ops and "Dropout" in ops


def test_large_external_data_other_folder_is_copied_sparsely(big: Path,
                                                             tmp_path: Path) -> None:
    out = tmp_path / "stripped.onnx"
    result = _cli("strip", str(big), "-o", str(out))
    assert result["peak_mb"] <= PEAK_LIMIT_MB, result
    loaded = modelio.load_model(out)
    assert len(loaded.data_files) == TENSORS
    for file in loaded.data_files:  # stripped.onnx.<token>-<n>.data, next to the output
        assert modelio.data_file_pattern("stripped.onnx").fullmatch(file.location)
        assert file.size == ELEMENTS * 4
        assert file.path.stat().st_blocks * 512 < (1 << 20)  # the holes stayed holes
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["stripped.onnx", *(file.location for file in loaded.data_files)])
