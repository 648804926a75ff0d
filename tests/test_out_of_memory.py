"""Out of memory is exit 6 and one line, everywhere: refused before the work starts when
the address space cannot hold it (protobuf's C code crashes instead of raising), and
a MemoryError wrapped by a library is still out of memory, not an invalid model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto
from onnx import helper as oh

from spatialdrop_onnx.errors import ExitCode, OutOfMemory, caused_by_memory

SITES = 40_000  # 120,000 nodes: about 5 MB of structure (inspect needs ~21x, rewrite ~95x)


@pytest.fixture(scope="module")
def big_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    nodes, initializers, previous = [], [], "x"
    initializers.append(oh.make_tensor("ratio", TensorProto.FLOAT, [], [0.1]))
    for i in range(SITES):
        nodes.append(oh.make_node("Add", [previous, "bias"], [f"a{i}"], name=f"add{i}"))
        nodes.append(oh.make_node("Relu", [f"a{i}"], [f"r{i}"], name=f"relu{i}"))
        nodes.append(oh.make_node("Dropout", [f"r{i}", "ratio", "training_mode"], [f"d{i}"],
                                  name=f"drop{i}"))
        previous = f"d{i}"
    initializers.append(oh.make_tensor("bias", TensorProto.FLOAT, [4], [0.0, 0.1, 0.2, 0.3]))
    graph = oh.make_graph(
        nodes, "big",
        [oh.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]),
         oh.make_tensor_value_info("training_mode", TensorProto.BOOL, [])],
        [oh.make_tensor_value_info(previous, TensorProto.FLOAT, ["N", 4])], initializers)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    path = tmp_path_factory.mktemp("oom") / "big.onnx"
    onnx.save(model, path)
    return path


#: In a child with nothing else running (no onnxruntime thread pools, whose malloc arenas can
#: spin on a failed mapping under a cap this tight): load the model, cap the address space a
#: little above what the process uses, and ask the probe.
_PROBE_UNDER_A_LIMIT = """
import re, resource, sys
import onnx
from spatialdrop_onnx.errors import OutOfMemory
from spatialdrop_onnx.headroom import ensure_headroom
model = onnx.load({path!r})
size = int(re.search(r"VmSize:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) * 1024
resource.setrlimit(resource.RLIMIT_AS, (size + {headroom}, resource.RLIM_INFINITY))
try:
    ensure_headroom(model, {work!r})
except OutOfMemory as err:
    print(err)
    sys.exit(6)
"""


@pytest.mark.parametrize(("work", "headroom", "code"), [
    ("rewrite", 200 << 20, 6),     # needs about 95 x 5 MB: refused under a 200 MB cap
    ("monte_carlo", 200 << 20, 6),
    ("inspect", 2 << 30, 0),       # the control: the same probe passes with room
    ("rewrite", 2 << 30, 0),
])
def test_the_probe_asks_the_kernel(big_model: Path, work: str, headroom: int, code: int) -> None:
    done = subprocess.run([sys.executable, "-c", _PROBE_UNDER_A_LIMIT.format(
        path=str(big_model), headroom=headroom, work=work)],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    if code:
        assert "not enough memory" in done.stdout


@pytest.mark.parametrize("command", ["rewrite", "inline", "strip", "inspect", "mc"])
def test_each_command_refuses_work_the_kernel_cannot_map(
        big_model: Path, tmp_path: Path, command: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Whatever the command, a refused probe is one line, exit 6, nothing written."""
    import errno

    from spatialdrop_onnx import headroom
    from spatialdrop_onnx.cli import main

    def refused(*args: object) -> None:
        raise OSError(errno.ENOMEM, "Cannot allocate memory")

    monkeypatch.setattr(headroom.mmap, "mmap", refused)
    argv = [command, str(big_model), "-q"]
    if command != "inspect":
        argv += ["-o", str(tmp_path / "out.onnx")]
    if command == "mc":
        argv += ["-n", "4"]
    assert main(argv) == ExitCode.ENVIRONMENT
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "not enough memory" in err, err
    assert list(tmp_path.iterdir()) == []  # nothing half-written, no temporary file


def test_a_wrapped_memory_error_is_out_of_memory(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """onnx_ir raises SerdeError from the MemoryError of a graph it could not build: the CLI
    reports exit 6, and does not load the model again to ask the checker (exit 3 before)."""
    from op_models import dropout_model

    from spatialdrop_onnx.cli import main, output
    from spatialdrop_onnx.passes import rewrite_pass

    class SerdeError(RuntimeError):
        pass

    def out_of_memory(*args: object, **kwargs: object) -> None:
        try:
            raise MemoryError
        except MemoryError as err:
            raise SerdeError("Error calling _deserialize_graph") from err

    reloaded: list[str] = []
    monkeypatch.setattr(rewrite_pass, "apply_rules", out_of_memory)
    monkeypatch.setattr(output, "_checker_verdict", lambda src: reloaded.append(src) or "")
    path = tmp_path / "m.onnx"
    onnx.save(dropout_model((2, 3, 4), seed=1), path)
    assert main(["rewrite", str(path), "-o", str(tmp_path / "r.onnx")]) == ExitCode.ENVIRONMENT
    assert "out of memory" in capsys.readouterr().err
    assert reloaded == []


def test_caused_by_memory_follows_causes_and_contexts() -> None:
    try:
        try:
            raise MemoryError
        except MemoryError:
            raise ValueError("while handling")  # noqa: B904 - the implicit context
    except ValueError as err:
        assert caused_by_memory(err)
    assert not caused_by_memory(ValueError("no"))
    assert OutOfMemory("x").exit_code == ExitCode.ENVIRONMENT
