"""Reliability of the commands themselves (issue 9 items 15 and 18).

* onnx's C++ shape inference and version converter abort the process (SIGABRT)
  on some malformed models; the CLI runs them in a forked child
  (``spatialdrop_onnx.isolation``) and answers with one line and a documented
  exit code. No onnx C++ check runs in the CLI's own process on user input.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto
from onnx import helper as oh

TESTS = Path(__file__).resolve().parent
INT_MAX = 2**31 - 1
DOCUMENTED_CODES = {0, 2, 3, 4, 5, 6}


def _env(**extra: str) -> dict[str, str]:
    root = str(TESTS.parent)
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": root + (os.pathsep + path if path else ""), **extra}


def run_cli_many(invocations: list[list[str]], **env: str) -> tuple[int, list[dict]]:
    """Every invocation through ``cli.main`` in one child: (its return code, results)."""
    done = subprocess.run([sys.executable, str(TESTS / "cli_driver.py"), json.dumps(invocations)],
                          capture_output=True, text=True, timeout=300, env=_env(**env),
                          check=False)
    return done.returncode, (json.loads(done.stdout) if done.returncode == 0 else [])


# --- Item 15: an abort inside onnx never takes the CLI down ------------------------------


def aborting_model(kind: str) -> onnx.ModelProto:
    """An input dim of -1 and ``Slice(ends=INT_MAX)``: onnx's shape inference (and the
    version converter, which runs it) fail an assertion and abort on this."""
    opset = 13 if kind == "opset 13" else 18
    inits = [oh.make_tensor("starts", TensorProto.INT64, [1], [0]),
             oh.make_tensor("ends", TensorProto.INT64, [1], [INT_MAX]),
             oh.make_tensor("axes", TensorProto.INT64, [1], [0])]
    nodes = [oh.make_node("Slice", ["x", "starts", "ends", "axes"], ["s"])]
    if kind == "mask":  # strip needs the types to build the all-true mask
        inits += [oh.make_tensor("r", TensorProto.FLOAT, [], [0.5]),
                  oh.make_tensor("t", TensorProto.BOOL, [], [True])]
        nodes += [oh.make_node("Dropout", ["s", "r", "t"], ["d", "m"]),
                  oh.make_node("Cast", ["m"], ["mf"], to=TensorProto.FLOAT),
                  oh.make_node("Mul", ["d", "mf"], ["y"])]
    else:  # a random op next to it: rewrite, strip and inspect infer types
        nodes += [oh.make_node("RandomUniformLike", ["s"], ["u"]),
                  oh.make_node("Add", ["s", "u"], ["y"])]
    graph = oh.make_graph(nodes, "g", [oh.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 4])],
                          [oh.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])], inits)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)])
    model.ir_version = 8
    return model


ABORT_KINDS = ("random op", "mask", "opset 13")


@pytest.fixture(scope="module")
def aborting_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("abort")
    paths = {}
    for kind in ABORT_KINDS:
        paths[kind] = folder / f"{kind.replace(' ', '_')}.onnx"
        onnx.save(aborting_model(kind), paths[kind])
    return paths


def test_the_probe_really_aborts_onnx(aborting_models: dict[str, Path]) -> None:
    # The control: without isolation the same command dies of SIGABRT.
    done = subprocess.run([sys.executable, "-m", "spatialdrop_onnx", "inspect",
                           str(aborting_models["random op"])], capture_output=True, text=True,
                          timeout=120, env=_env(SPATIALDROP_ONNX_NO_ISOLATION="1"), check=False)
    assert done.returncode == -signal.SIGABRT


def test_an_onnx_abort_never_kills_the_cli(aborting_models: dict[str, Path],
                                          tmp_path: Path) -> None:
    invocations = []
    for path in aborting_models.values():
        invocations.append(["inspect", str(path)])
        for command in ("strip", "rewrite"):
            invocations.append([command, str(path), "-q", "-o",
                                str(tmp_path / f"{command}-{path.name}")])
    code, results = run_cli_many(invocations)
    assert code == 0, "the child died"
    by_call = {(r["argv"][0], Path(r["argv"][1]).stem): r for r in results}
    for result in results:
        assert result["code"] in DOCUMENTED_CODES, result
        assert "Traceback" not in result["err"]
        assert len(result["err"].splitlines()) <= 1, result["err"]
    # What each gives: partial where the random op stays, a model where it can.
    assert by_call["inspect", "random_op"]["out"].startswith("unconvertible")
    assert by_call["strip", "random_op"]["code"] == 5
    assert by_call["strip", "mask"]["code"] == 0  # the declared types suffice
    stripped = onnx.load(tmp_path / "strip-mask.onnx")
    assert {n.op_type for n in stripped.graph.node} >= {"ConstantOfShape"}
    assert "Dropout" not in {n.op_type for n in stripped.graph.node}
    crashed = by_call["rewrite", "opset_13"]
    assert crashed["code"] == 3
    assert crashed["err"] == (f"spatialdrop-onnx: error: {aborting_models['opset 13']}: onnx "
                              "crashed (SIGABRT) while converting the opset: the model is "
                              "malformed\n")
    assert not (tmp_path / "rewrite-opset_13.onnx").exists()


#: onnx's C++ entry points that validate or transform a whole model (they can abort).
CPP_ENTRY_POINTS = {
    "checker": ("check_model", "check_model_path", "check_graph", "check_function"),
    "shape_inference": ("infer_shapes", "infer_shapes_path", "infer_function_output_types"),
    "version_converter": ("convert_version",),
    "inliner": ("inline_local_functions", "inline_selected_functions",
                "inline_selected_functions2"),
}

GUARD_MODELS = {
    # a random-mask site: rules, shape inference
    "random": """<ir_version: 8, opset_import: ["": 18]>
        g (float[2,3,4,5] x) => (float[2,3,4,5] y) <float k = {0.5}, float s = {2}> {
            u = RandomUniform<shape = [2, 3, 1, 1]>()
            keep = Less(u, k)
            m = Cast<to = 1>(keep)
            ms = Mul(m, s)
            y = Mul(x, ms)
        }""",
    # below opset 15 with a function: the version converter, per function too
    "opset 8": """<ir_version: 8, opset_import: ["": 8, "local": 1]>
        g (float[2,3,4,5] x) => (float[2,3,4,5] y) <float r = {0.5}> {
            d, m = Dropout<ratio: float = 0.5>(x)
            z = Mul(d, m)
            y = local.f(z)
        }
        <domain: "local", opset_import: ["": 8]>
        f (a) => (b) {
            k = Constant<value = float {0.5}>()
            s = Constant<value = float {2}>()
            u = RandomUniform<shape = [2, 3, 4, 5]>()
            keep = Less(u, k)
            m = Cast<to = 1>(keep)
            ms = Mul(m, s)
            b = Mul(a, ms)
        }""",
    # a consumed mask: strip infers the data's type
    "mask": """<ir_version: 8, opset_import: ["": 18]>
        g (float[2,3,4,5] x) => (float[2,3,4,5] y) <float r = {0.5}, bool t = {1}> {
            d, m = Dropout(x, r, t)
            mf = Cast<to = 1>(m)
            y = Mul(d, mf)
        }""",
    # malformed inside (an attribute of the wrong type): the safety net asks the checker
    "attribute type": """<ir_version: 8, opset_import: ["": 18]>
        g (float[2,3,4,5] x) => (float[2,3,4,5] y) <float k = {0.5}, float s = {2}> {
            u = RandomUniform<shape = 2.5>()
            keep = Less(u, k)
            m = Cast<to = 1>(keep)
            ms = Mul(m, s)
            y = Mul(x, ms)
        }""",
}


def test_no_onnx_model_check_runs_in_the_cli_process(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Every onnx C++ call on a user's model runs in the forked child (isolation)."""
    import onnx.onnx_cpp2py_export as cpp
    import onnx.parser

    from spatialdrop_onnx.cli import main
    from spatialdrop_onnx.isolation import in_forked_child

    in_process: list[str] = []

    def guard(module: str, name: str):  # noqa: ANN202 - a wrapper
        original = getattr(getattr(cpp, module), name)

        def guarded(*args: object, **kwargs: object) -> object:
            if not in_forked_child():
                in_process.append(f"{module}.{name}")
            return original(*args, **kwargs)
        return guarded

    for module, names in CPP_ENTRY_POINTS.items():
        for name in names:
            monkeypatch.setattr(getattr(cpp, module), name, guard(module, name))
    codes = {}
    for label, text in GUARD_MODELS.items():
        path = tmp_path / f"{label.replace(' ', '_')}.onnx"
        onnx.save(onnx.parser.parse_model(text), path)
        for argv in (["inspect", str(path), "-q"],
                     ["strip", str(path), "-q", "-o", str(tmp_path / "s.onnx")],
                     ["rewrite", str(path), "-q", "-o", str(tmp_path / "r.onnx")]):
            codes[label, argv[0]] = main(argv)
    assert not in_process, in_process
    # The calls did run (in the children): the conversions and checks took place.
    assert codes == {**{(label, c): 0 for label in GUARD_MODELS
                        for c in ("inspect", "strip", "rewrite")},
                     **{("attribute type", c): 3 for c in ("inspect", "strip", "rewrite")}}
