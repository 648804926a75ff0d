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

SITES = 40_000  # 120,000 nodes: about 5 MB of structure


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


#: Room left above the imports: enough to load the model (a tighter cap can leave a C library
#: retrying a failed allocation forever, seen once), less than any pass but inspect needs.
HEADROOM = 100 << 20

#: In a child: import everything a command needs, then cap the address space a little
#: above what the process already uses, then run the command as the console script does.
_UNDER_A_LIMIT = """
import re, resource, sys
import onnx, onnx_ir, onnxruntime, onnxscript
import spatialdrop_onnx.inlining, spatialdrop_onnx.passes.monte_carlo
from spatialdrop_onnx.cli import main
import spatialdrop_onnx.cli.group
size = int(re.search(r"VmSize:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) * 1024
resource.setrlimit(resource.RLIMIT_AS, (size + {headroom}, resource.RLIM_INFINITY))
sys.exit(main({argv!r}))
"""


@pytest.mark.parametrize("command", ["rewrite", "inline", "strip", "inspect", "mc"])
def test_work_that_cannot_fit_is_refused_before_it_starts(big_model: Path, tmp_path: Path,
                                                          command: str) -> None:
    argv = [command, str(big_model), "-q"]
    if command != "inspect":
        argv += ["-o", str(tmp_path / "out.onnx")]
    if command == "mc":
        argv += ["-n", "4"]
    done = subprocess.run([sys.executable, "-c",
                           _UNDER_A_LIMIT.format(headroom=HEADROOM, argv=argv)],
                          capture_output=True, text=True, timeout=300)
    if command == "inspect" and done.returncode == 0:
        return  # inspect's growth (about 21x the structure) fits: done, within the limit
    assert done.returncode == ExitCode.ENVIRONMENT, (done.returncode, done.stderr)
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert "not enough memory" in done.stderr or "out of memory" in done.stderr
    assert not (tmp_path / "out.onnx").exists()
    assert list(tmp_path.iterdir()) == []  # nothing half-written, no temporary file


def test_the_same_work_runs_with_room(big_model: Path, tmp_path: Path) -> None:
    """The control: the probe does not refuse what fits."""
    done = subprocess.run([sys.executable, "-c", _UNDER_A_LIMIT.format(
        headroom=3 << 30, argv=["strip", str(big_model), "-q", "-o", str(tmp_path / "s.onnx")])],
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "s.onnx").exists()


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
