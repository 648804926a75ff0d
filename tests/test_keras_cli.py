"""``spatialdrop-onnx convert``: refusals, one-line errors, output safety, report and progress.

Most cases run the CLI in-process (TensorFlow is imported once); one runs it as
a user would, in a fresh process, to check ``--import``, quiet output and exit codes.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import keras_models as km
import numpy as np
import onnx
import pytest
from keras_cli_runner import assert_one_line_error, run, run_cli, session
from passes_helpers import all_nodes

from spatialdrop_onnx.cli.convert_command import TerminalProgress
from spatialdrop_onnx.errors import ExitCode

TESTS = Path(__file__).resolve().parent

USAGE, INVALID, REFUSED, ENVIRONMENT = (ExitCode.USAGE, ExitCode.INVALID, ExitCode.REFUSED,
                                      ExitCode.ENVIRONMENT)


@pytest.fixture(scope="session")
def files(keras: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small model files in every format the refusal tests need."""
    folder = tmp_path_factory.mktemp("keras_cli")
    tiny = km.tiny_dense_model(keras)
    made = {"keras": folder / "tiny.keras", "h5": folder / "tiny.h5",
            "savedmodel": folder / "tiny_savedmodel"}
    tiny.save(made["keras"])
    tiny.save(made["h5"])
    tiny.export(made["savedmodel"], verbose=False)
    unconvertible = folder / "unconvertible.keras"
    km.unconvertible_model(keras).save(unconvertible)
    made["unconvertible"] = unconvertible
    return made


def test_keras_file_converts_and_reports(files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "tiny.onnx"
    result = run_cli("convert", files["keras"], "-o", out)
    assert result.code == 0, result.stderr
    assert "dropout sites: 1 found" in result.stdout
    assert "dropout (Dropout, rate=0.25) -> Dropout(ratio=0.25)" in result.stdout
    assert result.stderr == ""  # no progress when stderr is not a terminal
    onnx.checker.check_model(onnx.load(out), full_check=True)


def test_training_default_sets_the_switch(files: dict[str, Path], tmp_path: Path) -> None:
    """convert takes --training-default as every writer does: the switch's initializer
    default, false unless asked (the self-check compares inference either way)."""
    defaults = {}
    for value in ("true", "false"):
        out = tmp_path / f"{value}.onnx"
        result = run_cli("convert", files["keras"], "-o", out, "-q", "--training-default", value)
        assert result.code == 0, result.stderr
        model = onnx.load(out)
        (switch,) = [t for t in model.graph.initializer if t.name == "training_mode"]
        defaults[value] = bool(onnx.numpy_helper.to_array(switch))
    assert defaults == {"true": True, "false": False}


def test_quiet_prints_nothing(files: dict[str, Path], tmp_path: Path) -> None:
    result = run_cli("convert", files["keras"], "-o", tmp_path / "q.onnx", "-q")
    assert (result.code, result.stdout, result.stderr) == (0, "", "")
    assert (tmp_path / "q.onnx").is_file()


# --- Formats that can run code ----------------------------------------------------------


@pytest.mark.parametrize("kind", ["h5", "savedmodel"])
def test_untrusted_formats_are_refused(files: dict[str, Path], tmp_path: Path,
                                       kind: str) -> None:
    out = tmp_path / "out.onnx"
    result = run_cli("convert", files[kind], "-o", out)
    assert_one_line_error(result, REFUSED, "--trust-model", "arbitrary code")
    assert not out.exists()


def test_h5_with_trust_model_converts(files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "h5.onnx"
    result = run_cli("convert", files["h5"], "-o", out, "--trust-model", "--opset", "15", "--json")
    assert result.code == 0, result.stderr
    report = result.report
    assert report["source_format"] == "h5" and report["opset"] == 15
    assert [s["path"] for s in report["sites"]] == ["dropout"]
    model = onnx.load(out)
    assert next(o.version for o in model.opset_import if o.domain == "") == 15


def test_savedmodel_with_trust_model_converts_its_inference_graph(
        files: dict[str, Path], tmp_path: Path, keras: Any) -> None:
    out = tmp_path / "sm.onnx"
    result = run_cli("convert", files["savedmodel"], "-o", out, "--trust-model", "--json")
    assert result.code == 0, result.stderr
    report = result.report
    assert report["sites"] == [] and any("SavedModel" in w for w in report["warnings"])
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    expected = km.tiny_dense_model(keras).predict(x, verbose=0)
    feeds = {report["inputs"][0]["name"]: x}
    got = list(run(session(str(out)), feeds, None).values())[0]
    np.testing.assert_allclose(got, expected, atol=1e-5)


def _lambda_file(keras: Any, folder: Path) -> tuple[Path, Path]:
    sentinel = folder / "payload_ran"
    source = folder / "lambda.keras"
    km.lambda_model(keras, sentinel).save(source)
    sentinel.unlink(missing_ok=True)  # building the model ran the payload once
    return source, sentinel


def test_lambda_layer_is_refused_and_never_runs(keras: Any, tmp_path: Path) -> None:
    source, sentinel = _lambda_file(keras, tmp_path)
    out = tmp_path / "out.onnx"
    for extra in ((), ("--trust-model",)):  # --trust-model never lifts safe_mode for .keras
        result = run_cli("convert", source, "-o", out, *extra)
        assert_one_line_error(result, REFUSED, "safe mode", "Lambda")
        assert not sentinel.exists() and not out.exists()
    # The payload is real: Keras without safe mode runs it.
    keras.saving.load_model(source, safe_mode=False)
    assert sentinel.exists()


def test_config_naming_an_arbitrary_callable_is_refused(files: dict[str, Path],
                                                        tmp_path: Path) -> None:
    evil = tmp_path / "callable.keras"
    with zipfile.ZipFile(files["keras"]) as src, zipfile.ZipFile(evil, "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            if name == "config.json":
                config = json.loads(data)
                hidden = next(layer for layer in config["config"]["layers"]
                              if layer["config"]["name"] == "hidden")
                hidden["config"]["activation"] = {"module": "os", "class_name": "function",
                                                  "config": "system", "registered_name": "system"}
                data = json.dumps(config).encode()
            dst.writestr(name, data)
    result = run_cli("convert", evil, "-o", tmp_path / "out.onnx")
    assert_one_line_error(result, REFUSED, "'system'", "'os'")


# --- Bad inputs -------------------------------------------------------------------------------


def _bad_input(tmp_path: Path, kind: str) -> tuple[Path, str]:
    path = tmp_path / f"model_{kind}.keras"
    if kind == "missing":
        return path, "no such file"
    if kind == "empty":
        path.write_bytes(b"")
        return path, "empty"
    if kind == "text":
        path.write_text("not a model\n")
        return path, "not a zip"
    if kind == "zip_without_config":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("readme.txt", "hello")
        return path, "no config.json"
    if kind == "corrupt_config":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("config.json", "{ not json")
            archive.writestr("metadata.json", "{}")
        return path, "cannot load"
    if kind == "directory":
        path = tmp_path / "folder"
        path.mkdir()
        return path, "not a TensorFlow SavedModel"
    if kind == "onnx_extension":
        path = tmp_path / "model.onnx"
        path.write_bytes(b"\x08\x07")
        return path, "not a Keras model file"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["missing", "empty", "text", "zip_without_config",
                                  "corrupt_config", "directory", "onnx_extension"])
def test_bad_input_is_a_one_line_error(keras: Any, tmp_path: Path, kind: str) -> None:
    source, fragment = _bad_input(tmp_path, kind)
    out = tmp_path / "out.onnx"
    assert_one_line_error(run_cli("convert", source, "-o", out), INVALID, fragment)
    assert not out.exists()


def test_existing_output_survives_a_failed_conversion(files: dict[str, Path],
                                                      tmp_path: Path) -> None:
    out = tmp_path / "keep.onnx"
    out.write_bytes(b"previous model")
    assert_one_line_error(run_cli("convert", files["h5"], "-o", out), REFUSED, "--trust-model")
    assert_one_line_error(run_cli("convert", files["unconvertible"], "-o", out), INVALID,
                          "Erfinv")
    assert out.read_bytes() == b"previous model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.onnx"]  # no temp file left


def test_output_may_not_overwrite_the_input(files: dict[str, Path], tmp_path: Path) -> None:
    copy = tmp_path / "same.keras"
    copy.write_bytes(files["keras"].read_bytes())
    assert_one_line_error(run_cli("convert", copy, "-o", copy), REFUSED, "overwrite the input")
    assert copy.read_bytes() == files["keras"].read_bytes()


def test_missing_output_folder(files: dict[str, Path], tmp_path: Path) -> None:
    result = run_cli("convert", files["keras"], "-o", tmp_path / "no" / "such" / "m.onnx")
    assert_one_line_error(result, INVALID, "does not exist")


@pytest.mark.parametrize("opset", ["14", "19"])
def test_unsupported_opset(files: dict[str, Path], tmp_path: Path, opset: str) -> None:
    result = run_cli("convert", files["keras"], "-o", tmp_path / "m.onnx", "--opset", opset)
    assert_one_line_error(result, USAGE, f"--opset {opset}", "15..18")


def test_layer_tf2onnx_cannot_convert_is_named(files: dict[str, Path], tmp_path: Path) -> None:
    result = run_cli("convert", files["unconvertible"], "-o", tmp_path / "m.onnx")
    assert_one_line_error(result, INVALID, "'inverse_erf'", "InverseErf", "Erfinv", "tf2onnx")


def test_tensorflow_missing_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            files: dict[str, Path]) -> None:
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # makes `import tensorflow` fail
    result = run_cli("convert", files["keras"], "-o", tmp_path / "m.onnx")
    assert_one_line_error(result, ENVIRONMENT, "spatialdrop-onnx[keras]", "TensorFlow")


def test_import_of_a_missing_module(files: dict[str, Path], tmp_path: Path) -> None:
    result = run_cli("convert", files["keras"], "-o", tmp_path / "m.onnx",
                     "--import", "no_such_module_xyz")
    assert_one_line_error(result, INVALID, "--import no_such_module_xyz", "ModuleNotFoundError")


def test_unregistered_custom_layer_suggests_import(keras: Any, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "nested.keras"
    km.nested_model(keras).save(source)
    registry = keras.saving.get_custom_objects()
    for name in [n for n in registry if n.startswith("spatialdrop_tests>")]:
        monkeypatch.delitem(registry, name)
    result = run_cli("convert", source, "-o", tmp_path / "m.onnx")
    assert_one_line_error(result, REFUSED, "ResidualStack", "--import")


# --- Nested dropout through --import, as a user runs it -------------------------------


def test_nested_custom_layer_with_import_in_a_fresh_process(keras: Any, tmp_path: Path) -> None:
    model = km.nested_model(keras)
    source = tmp_path / "nested.keras"
    model.save(source)
    out = tmp_path / "nested.onnx"
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    result = subprocess.run(
        [sys.executable, "-m", "spatialdrop_onnx", "convert", str(source), "-o", str(out),
         "--import", "keras_custom_layers", "--json"],
        capture_output=True, text=True, env=env, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    report = json.loads(result.stdout)
    paths = [s["path"] for s in report["sites"]]
    assert paths == ["tcn/residual_block_0/spatial_dropout",
                     "tcn/residual_block_1/spatial_dropout"]
    for site in report["sites"]:
        assert site["training"] == "kept"
        assert site["converted_to"] == ["SpatialDropout(shared_axes=[1], ratio=0.3)"]
    converted = onnx.load(out)
    assert sum(n.op_type == "SpatialDropout" for n in all_nodes(converted)) == 2
    sequence = np.random.default_rng(1).standard_normal((5, 16, 4)).astype(np.float32)
    expected = model.predict(sequence, verbose=0)
    got = list(run(session(str(out)), {"sequence": sequence}, False).values())[0]
    assert float(np.max(np.abs(got - expected))) <= 1e-5
    sampler = session(str(out))  # one session: each run draws fresh masks
    first, second = (list(run(sampler, {"sequence": sequence}, True).values())[0]
                     for _ in range(2))
    assert not np.array_equal(first, second)


def test_progress_on_a_terminal(files: dict[str, Path], tmp_path: Path) -> None:
    """Run under a pseudo-terminal: the slow steps are shown on stderr, then the summary."""
    out = tmp_path / "tty.onnx"
    command = [sys.executable, "-m", "spatialdrop_onnx", "convert", str(files["keras"]),
               "-o", str(out)]
    leader, follower = os.openpty()
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=follower, stderr=follower)
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    text = b"".join(chunks).decode(errors="replace")
    assert proc.wait(timeout=300) == 0, text
    lines = text.replace("\r\n", "\n").splitlines()
    steps = ("loading TensorFlow", "loading tiny.keras", "tracing the model",
             "converting with tf2onnx", "rewriting dropout", "checking the ONNX model")
    # Each progress step is one whole line "<step> ... <seconds> s", in order: a log line
    # from TensorFlow/absl/oneDNN would break a line or add one.
    progress = [line for line in lines if " ... " in line]
    assert [line.split(" ... ")[0] for line in progress] == list(steps), text
    assert all(re.fullmatch(r"[\w. ]+ \.\.\. \d+\.\d s", line) for line in progress), text
    summary = lines[len(progress):]
    assert summary[0].startswith("converted "), text
    assert "dropout sites: 1 found" in text and "Traceback" not in text
    # Nothing but our progress and summary reaches the terminal.
    ours = ("converted ", "dropout sites:", "  ", "check:", "note:", "warning:")
    assert all(line.startswith(ours) or not line for line in summary), text
    assert out.is_file()


def test_terminal_progress_lines() -> None:
    stream = io.StringIO()
    progress = TerminalProgress(stream)
    with progress("loading TensorFlow"):
        pass
    with pytest.raises(ValueError), progress("tracing the model"):
        raise ValueError("boom")
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("loading TensorFlow ... ") and lines[0].endswith(" s")
    assert lines[1] == "tracing the model ... failed"
