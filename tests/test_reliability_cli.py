"""Reliability of the commands themselves (issue 9 items 15 and 18).

* onnx's C++ shape inference and version converter abort the process (SIGABRT)
  on some malformed models; the CLI runs them in a forked child
  (``spatialdrop_onnx.isolation``) and answers with one line and a documented
  exit code. No onnx C++ check runs in the CLI's own process on user input.
* Output a script can trust: strict JSON, model names escaped in every line,
  the user's path in every error, a safety net quoting the onnx checker, and
  one table of exit codes for every command.
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
from passes_helpers import random_mask

TESTS = Path(__file__).resolve().parent
INT_MAX = 2**31 - 1
DOCUMENTED_CODES = {0, 2, 3, 4, 5, 6, 130, 143}
#: Reached by signals, in their own tests: 130 in test_cli_startup.py, 143 in
#: test_reliability_io.py (SIGTERM at random moments).
SIGNAL_CODES = {130, 143}


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


def test_the_probe_really_aborts_onnx(aborting_models: dict[str, Path],
                                      tmp_path: Path) -> None:
    # The control: without isolation a command that needs onnx's shape inference (strip
    # building the used mask from the data's rank) dies of SIGABRT on the same model.
    done = subprocess.run([sys.executable, "-m", "spatialdrop_onnx", "strip",
                           str(aborting_models["mask"]), "-q", "-o", str(tmp_path / "o.onnx")],
                          capture_output=True, text=True, timeout=120,
                          env=_env(SPATIALDROP_ONNX_NO_ISOLATION="1"), check=False)
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
    "random": f"""<ir_version: 8, opset_import: ["": 18]>
        g (float[2,3,4,5] x) => (float[2,3,4,5] y) <float k = {{0.5}}, float s = {{2}}> {{
            {random_mask()}
        }}""",
    # below opset 15 with a function: the version converter, per function too
    "opset 8": f"""<ir_version: 8, opset_import: ["": 8, "local": 1]>
        g (float[2,3,4,5] x) => (float[2,3,4,5] y) <float r = {{0.5}}> {{
            d, m = Dropout<ratio: float = 0.5>(x)
            z = Mul(d, m)
            y = local.f(z)
        }}
        <domain: "local", opset_import: ["": 8]>
        f (a) => (b) {{
            k = Constant<value = float {{0.5}}>()
            s = Constant<value = float {{2}}>()
            {random_mask("a", "b", "[2, 3, 4, 5]")}
        }}""",
    # a consumed mask: strip infers the data's type
    "mask": """<ir_version: 8, opset_import: ["": 18]>
        g (float[2,3,4,5] x) => (float[2,3,4,5] y) <float r = {0.5}, bool t = {1}> {
            d, m = Dropout(x, r, t)
            mf = Cast<to = 1>(m)
            y = Mul(d, mf)
        }""",
    # malformed inside (an attribute of the wrong type): the safety net asks the checker
    "attribute type": f"""<ir_version: 8, opset_import: ["": 18]>
        g (float[2,3,4,5] x) => (float[2,3,4,5] y) <float k = {{0.5}}, float s = {{2}}> {{
            {random_mask(uniform="u = RandomUniform<shape = 2.5>()")}
        }}""",
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


# --- Item 18: output a script can trust ---------------------------------------------------

#: A name that would forge an error line, recolour the terminal and reverse the text.
FORGED = "n\nspatialdrop-onnx: error: forged\x1b[31m\u202e"
RAW_CONTROLS = ("\x1b", "\u202e", "\r")


def forged_model(kind: str) -> onnx.ModelProto:
    """Model-supplied names (graph, nodes, values) carrying FORGED."""
    r = oh.make_tensor("r", TensorProto.FLOAT, [], [0.5])
    t = oh.make_tensor("t", TensorProto.BOOL, [], [True])
    x = oh.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    if kind == "sites":  # a Dropout and an unconvertible random op, both forged
        nodes = [oh.make_node("Dropout", ["x", "r", "t"], [FORGED], name=FORGED),
                 oh.make_node("RandomUniformLike", [FORGED], ["u"], name=FORGED + "u"),
                 oh.make_node("Add", [FORGED, "u"], ["y"])]
    elif kind == "switch":  # rewrite refuses: a subgraph (forged If name) computes the switch
        branch = oh.make_graph([oh.make_node("Identity", ["x"], ["training_mode"])], "b", [],
                               [oh.make_tensor_value_info("training_mode", TensorProto.FLOAT,
                                                          [2, 3])])
        nodes = [oh.make_node("If", ["c"], ["z"], name=FORGED, then_branch=branch,
                              else_branch=branch),
                 oh.make_node("Dropout", ["z", "r", "t"], ["y"])]
        t = oh.make_tensor("c", TensorProto.BOOL, [], [True])
        r = oh.make_tensor("r", TensorProto.FLOAT, [], [0.5])
        nodes[1].input[2] = "c"
    else:  # "attribute": an attribute of the wrong type on a forged node (the safety net)
        nodes = [oh.make_node("RandomUniform", [], ["u"], name=FORGED, shape=2.5),
                 oh.make_node("Less", ["u", "r"], ["keep"]),
                 oh.make_node("Cast", ["keep"], ["m"], to=TensorProto.FLOAT),
                 oh.make_node("Mul", ["m", "s"], ["ms"]),
                 oh.make_node("Mul", ["x", "ms"], ["y"])]
        t = oh.make_tensor("s", TensorProto.FLOAT, [], [2.0])
    graph = oh.make_graph(nodes, FORGED, [x], [oh.make_tensor_value_info("y", TensorProto.FLOAT,
                                                                         [2, 3])], [r, t])
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18)])


def _assert_clean_lines(text: str, allowed_starts: tuple[str, ...]) -> None:
    for char in RAW_CONTROLS:
        assert char not in text, repr(text)
    for line in text.splitlines():
        assert line.startswith(allowed_starts), repr(line)
        assert not line.startswith("spatialdrop-onnx: error: forged")


def test_model_names_never_forge_lines_or_drive_the_terminal(tmp_path: Path) -> None:
    paths = {}
    for kind in ("sites", "switch", "attribute"):
        paths[kind] = tmp_path / f"{kind}.onnx"
        onnx.save(forged_model(kind), paths[kind])
    out = str(tmp_path / "out.onnx")
    invocations = [["inspect", str(paths["sites"])], ["inspect", str(paths["sites"]), "--json"],
                   ["strip", str(paths["sites"]), "-o", out],
                   ["rewrite", str(paths["sites"]), "-o", out],
                   ["rewrite", str(paths["switch"]), "-o", out],
                   ["inspect", str(paths["attribute"])]]
    code, results = run_cli_many(invocations)
    assert code == 0
    inspect_text, inspect_json, strip, rewrite, switch, attribute = results
    # inspect: one line per site, the names escaped in place.
    lines = inspect_text["out"].splitlines()
    assert [line.split()[0] for line in lines] == ["elementwise", "unconvertible"]
    assert all("n\\nspatialdrop-onnx: error: forged\\x1b[31m\\u202e" in line for line in lines)
    _assert_clean_lines(inspect_text["out"], ("elementwise", "unconvertible"))
    # JSON keeps the names exactly (escaped as JSON strings).
    assert [s["name"] for s in json.loads(inspect_json["out"])] == [FORGED, FORGED + "u"]
    # strip and rewrite: a summary line and the partial-result line, names escaped.
    for result in (strip, rewrite):
        assert result["code"] == 5
        assert len(result["err"].splitlines()) == 2
        _assert_clean_lines(result["err"], (f"{out}: ", f"spatialdrop-onnx: error: wrote {out}"))
    # Error lines: the refused switch names the forged If, escaped.
    assert switch["code"] == 3 and len(switch["err"].splitlines()) == 1
    assert "(main/n\\nspatialdrop-onnx: error: forged" in switch["err"]
    _assert_clean_lines(switch["err"], (f"spatialdrop-onnx: error: {paths['switch']}: ",))
    # The safety net quotes the checker, whose message names the forged node.
    assert attribute["code"] == 3 and len(attribute["err"].splitlines()) == 1
    _assert_clean_lines(attribute["err"], (f"spatialdrop-onnx: error: {paths['attribute']}: ",))
    assert "it is invalid: Mismatched attribute type" in attribute["err"]


def test_library_log_records_stay_off_the_terminal(tmp_path: Path) -> None:
    # onnx_ir logs a warning naming the model's values for a dangling input.
    model = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["": 18]>
        g (float[2,3] x) => (float[2,3] y) <float k = {0.5}, float s = {2}> {
            u = RandomUniformLike(nowhere)
            keep = Less(u, k)
            m = Cast<to = 1>(keep)
            ms = Mul(m, s)
            y = Mul(x, ms)
        }""")
    path = tmp_path / "dangling.onnx"
    onnx.save(model, path)
    code, (inspected,) = run_cli_many([["inspect", str(path), "-q"]])
    assert code == 0 and inspected["code"] == 0
    assert inspected["err"] == "" and inspected["out"] == ""


def test_json_never_holds_nan_or_infinity(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import numpy as np

    from spatialdrop_onnx.cli import main
    from spatialdrop_onnx.cli.output import emit_json
    from spatialdrop_onnx.converters.keras_layers import LayerKind
    from spatialdrop_onnx.converters.keras_report import ConversionReport, LayerReport, Training

    def strict(text: str) -> object:
        def refuse(constant: str) -> None:
            raise AssertionError(f"{constant} in JSON output")
        return json.loads(text, parse_constant=refuse)

    model = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["": 18, "org.spatialdrop": 1]>
        g (float[2,3,4,5] x) => (float[2,3,4,5] y)
          <float r = {nan}, float q = {inf}, bool t = {1}> {
            a = org.spatialdrop.SpatialDropout(x, r, t)
            y = Dropout(a, q, t)
        }""")
    path = tmp_path / "nan.onnx"
    onnx.save(model, path)
    assert main(["inspect", str(path), "--json"]) == 0
    assert [s["ratio"] for s in strict(capsys.readouterr().out)] == [None, None]
    assert main(["rewrite", str(path), "-o", str(tmp_path / "r.onnx"), "--json"]) == 0
    assert [s["ratio"] for s in strict(capsys.readouterr().out)["rewired"]] == [None, None]
    # The converter's report: its floats (max_abs_diff, rates, timings) too.
    report = ConversionReport("in.keras", "out.onnx", "keras", 18, False,
                              max_abs_diff_vs_keras=float("nan"),
                              seconds={"load": float("inf")},
                              layers=[LayerReport("d", "Dropout", LayerKind.DROPOUT,
                                                  float("-inf"), {"noise": np.float32("nan")},
                                                  Training.KEPT)])
    emit_json(report.to_dict())
    data = strict(capsys.readouterr().out)
    assert data["max_abs_diff_vs_keras"] is None and data["seconds"] == {"load": None}
    assert data["sites"][0]["rate"] is None and data["sites"][0]["details"] == {"noise": None}


@pytest.mark.parametrize("text,reason", [
    ("u = RandomUniform<shape = 2.5>()",
     "Mismatched attribute type in ' : shape'. Expected: 'INTS', actual: 'FLOAT'"),
    ("""u = RandomUniform<shape = [2, 3]>()
        u = RandomUniform<shape = [2, 3]>()""",
     "Graph must be in single static assignment (SSA) form, however 'u' has been used as "
     "output names multiple times."),
], ids=["attribute type", "two producers"])
def test_the_safety_net_says_what_is_wrong(tmp_path: Path, capsys: pytest.CaptureFixture,
                                          text: str, reason: str) -> None:
    """A model that loads but breaks a pass inside: the onnx checker's reason is the message."""
    from spatialdrop_onnx.cli import main

    path = tmp_path / "bad.onnx"
    onnx.save(onnx.parser.parse_model(f"""<ir_version: 8, opset_import: ["": 18]>
        g (float[2,3] x) => (float[2,3] y) <float k = {{0.5}}, float s = {{2}}> {{
        {random_mask(uniform=text)} }}"""), path)
    for action in ("inspect", "strip", "rewrite"):
        argv = [action, str(path)] + ([] if action == "inspect" else ["-o", str(tmp_path / "o")])
        assert main(argv) == 3
        err = capsys.readouterr().err
        assert err == (f"spatialdrop-onnx: error: {path}: cannot {action} this model, it is "
                       f"invalid: {reason}\n")


# --- Exit codes: distinct, documented, the same for every command ----------------------------

EXIT_MODELS = {
    "ok": """<ir_version: 8, opset_import: ["": 18]>
        g (float[2,3] x) => (float[2,3] y) <float r = {0.5}, bool t = {1}> {
            y = Dropout(x, r, t)
        }""",
    "partial": """<ir_version: 8, opset_import: ["": 18]>
        g (float[2,3] x) => (float[2,3] y) {
            n = RandomNormalLike(x)
            y = Add(x, n)
        }""",
    "invalid": f"""<ir_version: 8, opset_import: ["": 18]>
        g (float[2,3] x) => (float[2,3] y) <float k = {{0.5}}, float s = {{2}}> {{
            {random_mask(uniform="u = RandomUniform<shape = 2.5>()")}
        }}""",
    "foreign_switch": """<ir_version: 8, opset_import: ["": 18]>
        g (float[2,3] x, bool[2] training_mode) => (float[2,3] y)
          <float r = {0.5}, bool t = {1}> {
            y = Dropout(x, r, t)
        }""",
}


@pytest.fixture(scope="module")
def exit_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import zipfile

    import onnx.parser
    from modelio_cases import external

    folder = tmp_path_factory.mktemp("exit")
    files = {}
    for name, text in EXIT_MODELS.items():
        files[name] = folder / f"{name}.onnx"
        onnx.save(onnx.parser.parse_model(text), files[name])
    unsafe = onnx.parser.parse_model(EXIT_MODELS["ok"])
    unsafe.graph.initializer.append(external("w", "../secret.bin"))
    files["unsafe"] = folder / "unsafe.onnx"
    files["unsafe"].write_bytes(unsafe.SerializeToString())
    files["missing"] = folder / "missing.onnx"
    files["text"] = folder / "notes.txt"
    files["text"].write_text("not a model\n")
    files["h5"] = folder / "model.h5"
    files["h5"].write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(64))
    files["keras"] = folder / "model.keras"
    with zipfile.ZipFile(files["keras"], "w") as archive:
        archive.writestr("config.json", "{}")
    files["bomb"] = folder / "bomb.keras"
    with zipfile.ZipFile(files["bomb"], "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("config.json", bytes(80 * 1024**2))
    files["out"] = folder / "out" / "o.onnx"
    files["out"].parent.mkdir()
    files["nofolder"] = folder / "nowhere" / "o.onnx"
    return files


def _no_keras(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "keras", None)  # import keras fails at once


def _no_native(monkeypatch: pytest.MonkeyPatch) -> None:
    from spatialdrop_onnx import native

    def missing() -> str:
        raise native.NativeLibraryMissing("the native SpatialDropout kernel is not installed")
    monkeypatch.setattr(native, "get_library_path", missing)


# (command, case): (arguments with {file} placeholders, code, what the error line names,
# a monkeypatch that makes the environment fail).
EXIT_TABLE = {
    ("inspect", "done"): (["{ok}"], 0, None, None),
    ("inspect", "unknown option"): (["{ok}", "--bogus"], 2, "", None),
    ("inspect", "no such file"): (["{missing}"], 3, "missing", None),
    ("inspect", "malformed inside"): (["{invalid}"], 3, "invalid", None),
    ("inspect", "external data outside"): (["{unsafe}"], 4, "unsafe", None),
    ("strip", "done"): (["{ok}", "-o", "{out}"], 0, None, None),
    ("strip", "-o missing"): (["{ok}"], 2, "", None),
    ("strip", "no such file"): (["{missing}", "-o", "{out}"], 3, "missing", None),
    ("strip", "malformed inside"): (["{invalid}", "-o", "{out}"], 3, "invalid", None),
    ("strip", "output folder missing"): (["{ok}", "-o", "{nofolder}"], 3, "nofolder", None),
    ("strip", "external data outside"): (["{unsafe}", "-o", "{out}"], 4, "unsafe", None),
    ("strip", "-o is the input"): (["{ok}", "-o", "{ok}"], 4, "ok", None),
    ("strip", "random op left"): (["{partial}", "-o", "{out}", "-q"], 5, "wrote", None),
    ("rewrite", "done"): (["{ok}", "-o", "{out}"], 0, None, None),
    ("rewrite", "bad option value"): (["{ok}", "-o", "{out}", "--elementwise", "x"], 2, "",
                                      None),
    ("rewrite", "no such file"): (["{missing}", "-o", "{out}"], 3, "missing", None),
    ("rewrite", "malformed inside"): (["{invalid}", "-o", "{out}"], 3, "invalid", None),
    ("rewrite", "foreign training_mode"): (["{foreign_switch}", "-o", "{out}"], 3,
                                           "foreign_switch", None),
    ("rewrite", "external data outside"): (["{unsafe}", "-o", "{out}"], 4, "unsafe", None),
    ("rewrite", "-o is the input"): (["{ok}", "-o", "{ok}"], 4, "ok", None),
    ("rewrite", "random op left"): (["{partial}", "-o", "{out}", "-q"], 5, "wrote", None),
    ("convert", "bad --opset"): (["{keras}", "-o", "{out}", "--opset", "3"], 2, "", None),
    ("convert", "no such file"): (["{missing}", "-o", "{out}"], 3, "missing", None),
    ("convert", "not a Keras file"): (["{text}", "-o", "{out}"], 3, "text", None),
    ("convert", "HDF5 without --trust-model"): (["{h5}", "-o", "{out}"], 4, "h5", None),
    ("convert", "zip bomb"): (["{bomb}", "-o", "{out}"], 4, "bomb", None),
    ("convert", "TensorFlow missing"): (["{keras}", "-o", "{out}"], 6, "keras", _no_keras),
    ("bench", "done"): (["--shape", "2,3", "--repeat", "1", "--warmup", "0",
                         "--no-extensions", "-q"], 0, None, None),
    ("bench", "bad --shape"): (["--shape", "a,b"], 2, "", None),
    ("bench", "ratio out of range"): (["--ratio", "2"], 2, "", None),
    ("bench", "native kernel missing"): (["--shape", "2,3", "--repeat", "1"], 6, "",
                                         _no_native),
}


@pytest.mark.parametrize("command,case", list(EXIT_TABLE), ids=[" / ".join(k) for k in EXIT_TABLE])
def test_exit_code_table(command: str, case: str, exit_files: dict[str, Path],
                         monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """Each command x each failure it can meet: the documented code, one line, the path."""
    from spatialdrop_onnx.cli import main

    template, code, names, environment = EXIT_TABLE[command, case]
    if environment is not None:
        environment(monkeypatch)
    argv = [command, *(arg.format(**exit_files) for arg in template)]
    out = exit_files["out"]
    out.unlink(missing_ok=True)
    assert main(argv) == code
    err = capsys.readouterr().err
    if code == 0:
        assert err == "" or not err.startswith("spatialdrop-onnx: error")
        return
    assert len(err.splitlines()) == 1 and err.startswith("spatialdrop-onnx: error: "), err
    assert "Traceback" not in err and ".spatialdrop-" not in err  # never a temp file
    if names == "wrote":
        assert err.startswith(f"spatialdrop-onnx: error: wrote {out}, but ") and out.exists()
        return
    if names:
        assert err.startswith(f"spatialdrop-onnx: error: {exit_files[names]}: "), err
    if code != 5 and command in ("strip", "rewrite", "convert"):
        assert not out.exists()


def test_exit_codes_are_distinct_documented_and_all_reachable(capsys: pytest.CaptureFixture
                                                              ) -> None:
    from spatialdrop_onnx.cli import main
    from spatialdrop_onnx.errors import ExitCode

    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    documented = {int(line.split()[0]) for line in text.split("Exit codes")[1].splitlines()
                  if line.strip()[:1].isdigit()}
    assert documented == {int(c) for c in ExitCode} == DOCUMENTED_CODES
    assert {code for _, code, _, _ in EXIT_TABLE.values()} | SIGNAL_CODES == documented
    for command in ("inspect", "strip", "rewrite", "convert", "bench"):
        codes = {code for (c, _), (_, code, _, _) in EXIT_TABLE.items() if c == command}
        # convert's 0 needs TensorFlow: tests/test_keras_cli.py shows it.
        assert ({2} if command == "convert" else {0, 2}) <= codes, command
