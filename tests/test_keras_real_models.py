"""Real Keras architecture classes through ``convert``: every dropout site, the numbers, the report.

Each class (``models/architectures.py``: EfficientNetB0 with preprocessing, a
14-site TCN, a mini ``keras.applications`` ConvNeXt, bidirectional LSTM/GRU
with twin dropouts, user-written random layers) is built once per session with
random weights and non-trivial BatchNormalization statistics, saved as
``.keras`` and converted by ``convert_keras`` (the CLI's pipeline; the
partial-result cases run the CLI itself). Then:

* structure: every framework dropout site is an ONNX dropout node with the
  layer's rate and the shared axes its semantics dictate;
* inference: ``training_mode`` false equals ``model.predict`` (tolerance
  relative to the output scale);
* training: within ONE native-kernel session (``inference_session``) every
  site's output is its input with whole noise slices kept (exactly scaled) or
  dropped, at the layer's rate, and runs differ.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from dropout_checks import assert_drop_fraction, assert_structurally_valid
from keras_cli_runner import run_cli
from passes_helpers import all_nodes, load_script

import spatialdrop_onnx as sd
from spatialdrop_onnx.errors import ExitCode
from spatialdrop_onnx.sites import Kind, Site

#: |ONNX - Keras| allowed in inference, relative to the largest |Keras output|.
RELATIVE_TOLERANCE = 1e-4
#: Batch for numbers in inference; batch and runs for the training statistics.
EVAL_BATCH, TRAIN_BATCH, TRAIN_RUNS = 4, 16, 6
TF_LEFTOVERS = {"StatefulPartitionedCall", "PartitionedCall", "Erfc",
                "StatelessRandomUniformV2", "StatelessRandomNormalV2"}


@dataclass
class Converted:
    """One architecture, converted once per session."""

    name: str
    keras: Any
    path: Path
    onnx: onnx.ModelProto
    report: Any
    """The typed ``ConversionReport`` (``convert_keras``)."""
    architecture: Any

    def sample(self, batch: int, seed: int = 0) -> np.ndarray:
        return self.architecture.sample(batch, seed)

    @property
    def input_name(self) -> str:
        return self.onnx.graph.input[0].name

    def layer(self, path: str) -> Any:
        """The report entry of the Keras layer at ``path``."""
        return next(entry for entry in self.report.layers if entry.path == path)


@pytest.fixture(scope="session")
def architectures(keras: Any) -> Any:
    return load_script("architectures")


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("keras_real")


@pytest.fixture(scope="session")
def converted(architectures: Any, workdir: Path) -> Any:
    """``converted(name)``: the architecture built, saved and converted (cached)."""
    from spatialdrop_onnx.converters.keras_convert import convert_keras

    cache: dict[str, Converted] = {}

    def get(name: str) -> Converted:
        if name not in cache:
            architecture = architectures.ARCHITECTURES[name]
            model = architecture.build()
            source, out = workdir / f"{name}.keras", workdir / f"{name}.onnx"
            model.save(source)
            report = convert_keras(source, out)
            cache[name] = Converted(name, model, out, onnx.load(out), report, architecture)
        return cache[name]

    return get


# --- Helpers ---------------------------------------------------------------------------------


def dropout_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """SpatialDropout and ONNX Dropout nodes of the main graph."""
    return [n for n in model.graph.node
            if (n.domain, n.op_type) in ((sd.DOMAIN, sd.OP_TYPE), ("", "Dropout"))]


def assert_valid(model: onnx.ModelProto, keras_inputs: int = 1) -> None:
    """Checker, no TensorFlow op left, and no input without a value but the model's own."""
    onnx.checker.check_model(model, full_check=True)
    assert not {n.op_type for n in all_nodes(model)} & TF_LEFTOVERS
    initialized = {i.name for i in model.graph.initializer}
    valueless = [i.name for i in model.graph.input if i.name not in initialized]
    assert len(valueless) == keras_inputs, valueless  # captured constants are initializers
    assert [i.name for i in model.graph.input][keras_inputs:] == ["training_mode"]


def assert_equals_predict(c: Converted, batch: int = EVAL_BATCH) -> float:
    """Training off (explicit and default) equals Keras predict; returns the max diff."""
    x = c.sample(batch, seed=7)
    want = np.asarray(c.keras.predict(x, verbose=0), dtype=np.float64)
    session = sd.inference_session(c.onnx)
    worst = 0.0
    for feeds in ({c.input_name: x, "training_mode": np.array(False)}, {c.input_name: x}):
        got = session.run(None, feeds)[0].astype(np.float64)
        assert got.shape == want.shape
        diff = float(np.max(np.abs(got - want)))
        assert diff <= RELATIVE_TOLERANCE * float(np.max(np.abs(want))), diff
        worst = max(worst, diff)
    return worst


def exposed(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[onnx.NodeProto]]:
    """A copy whose dropout nodes' data inputs and outputs are also graph outputs."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    nodes = dropout_nodes(copy)
    present = {o.name for o in copy.graph.output}
    for node in nodes:
        for name in (node.input[0], node.output[0]):
            if name not in present:
                copy.graph.output.append(onnx.helper.make_tensor_value_info(
                    name, onnx.TensorProto.FLOAT, None))
                present.add(name)
    return copy, nodes


def training_runs(c: Converted, batch: int = TRAIN_BATCH, runs: int = TRAIN_RUNS
                  ) -> tuple[list[onnx.NodeProto], list[dict[str, np.ndarray]]]:
    """Every dropout node's input and output over ``runs`` runs of ONE native session."""
    model, nodes = exposed(c.onnx)
    session = sd.inference_session(model)  # unseeded draws repeat across new sessions
    names = [o.name for o in session.get_outputs()]
    feeds = {c.input_name: c.sample(batch, seed=8), "training_mode": np.array(True)}
    return nodes, [dict(zip(names, session.run(names, feeds), strict=True))
                   for _ in range(runs)]


def node_layer(c: Converted) -> dict[str, Any]:
    """Dropout node name → the Keras layer report whose Site it is."""
    return {site.name: entry for entry in c.report.layers for site in entry.sites}


def assert_elementwise_dropout(data: np.ndarray, output: np.ndarray, rate: float) -> np.ndarray:
    """ONNX Dropout: each element dropped or scaled by 1/(1-rate) (one float32 ulp)."""
    expected = (data.astype(np.float64) / (1.0 - rate)).astype(np.float32)
    kept = np.abs(output - expected) <= np.spacing(np.abs(expected))
    assert np.all(kept | (output == 0))
    return kept


def site_keeps(node: onnx.NodeProto, data: np.ndarray, output: np.ndarray, rate: float,
               axes: list[int]) -> np.ndarray:
    """Check one site's structure; the keep decisions of the slices whose data is not all 0."""
    if node.op_type == "Dropout":
        return assert_elementwise_dropout(data, output, rate)[data != 0]
    keep = assert_structurally_valid(data, output, rate, axes)
    shared = tuple(a for a in axes if data.shape[a] != 1)
    informative = np.broadcast_to((data != 0).any(axis=shared, keepdims=True), keep.shape)
    return keep[informative]


def check_sites_in_training(c: Converted, shared_axes: Any, rate_of: Any) -> set[str]:
    """Every site's structure in every run; drop fractions at the layers' rates; runs differ.

    ``shared_axes(entry, data shape)`` and ``rate_of(entry, data shape)`` give
    what the Keras layer's semantics dictate for a node's data (layout as the
    node sees it). Returns the layer paths seen.
    """
    nodes, runs = training_runs(c)
    owners = node_layer(c)
    keeps: dict[tuple[str, float], list[np.ndarray]] = {}
    for node in nodes:
        entry = owners[node.name]
        shape = runs[0][node.input[0]].shape
        rate = float(rate_of(entry, shape))
        for outputs in runs:
            keeps.setdefault((entry.path, rate), []).append(site_keeps(
                node, outputs[node.input[0]], outputs[node.output[0]], rate,
                shared_axes(entry, shape)))
    expected = variance = dropped = 0.0
    for (_, rate), pieces in keeps.items():
        keep = np.concatenate(pieces)
        assert_drop_fraction(keep, rate)
        expected += keep.size * rate
        variance += keep.size * rate * (1 - rate)
        dropped += keep.size - int(keep.sum())
    # All sites together: the number dropped matches the rates (4 standard deviations).
    assert expected >= 20 and abs(dropped - expected) <= 4 * math.sqrt(variance), \
        (dropped, expected)
    first = c.onnx.graph.output[0].name
    assert any(not np.array_equal(runs[0][first], r[first]) for r in runs[1:])
    return {path for path, _ in keeps}


def all_but_batch(entry: Any, shape: tuple[int, ...]) -> list[int]:
    return list(range(1, len(shape)))


def layer_rate(entry: Any, shape: tuple[int, ...]) -> float:
    """The rate of a dropout-family layer (``rate`` of the Keras layer)."""
    return entry.rate


# --- EfficientNetB0: preprocessing constants, 9 stochastic-depth sites + the top dropout ------


def test_efficientnet_every_site_converts(converted: Any) -> None:
    c = converted("efficientnet_b0")
    assert_valid(c.onnx)
    import keras

    depth = {layer.name: layer.rate for layer in c.keras.layers
             if isinstance(layer, keras.layers.Dropout) and layer.noise_shape is not None}
    assert len(depth) == 9  # blocks 2b 3b 4b 4c 5b 5c 6b 6c 6d
    for path, rate in depth.items():
        (site,) = c.layer(path).sites
        assert (site.becomes, site.shared_axes) == (sd.OP_TYPE, (1, 2, 3)), path
        assert site.ratio == pytest.approx(rate, abs=1e-9)
    (top,) = c.layer("top_dropout").sites
    assert (top.becomes, top.shared_axes, top.ratio) == ("Dropout", (), pytest.approx(0.2))
    assert [e.training.value for e in c.report.layers] == ["kept"] * 10
    assert c.report.partial_error() is None and not c.report.warnings
    ops = [n.op_type for n in dropout_nodes(c.onnx)]
    assert (ops.count(sd.OP_TYPE), ops.count("Dropout")) == (9, 1)


def test_efficientnet_inference_equals_predict(converted: Any) -> None:
    assert_equals_predict(converted("efficientnet_b0"))


def test_efficientnet_sites_in_training_mode(converted: Any) -> None:
    paths = check_sites_in_training(converted("efficientnet_b0"), all_but_batch, layer_rate)
    assert len(paths) == 10


# --- TCN: 14 consecutive SpatialDropout1D ------------------------------------------------------


def test_tcn_all_fourteen_sites_convert(converted: Any, architectures: Any) -> None:
    c = converted("tcn")
    assert_valid(c.onnx)
    paths = [f"b{k}_sdrop{i}" for k in range(len(architectures.TCN_DILATIONS)) for i in (1, 2)]
    assert len(paths) == 14
    for path in paths:
        entry = c.layer(path)
        (site,) = entry.sites
        assert entry.training.value == "kept" and site.becomes == sd.OP_TYPE
        assert site.ratio == pytest.approx(architectures.TCN_RATE)
    assert sum(n.op_type == sd.OP_TYPE for n in dropout_nodes(c.onnx)) == 14


def test_tcn_inference_equals_predict(converted: Any) -> None:
    assert_equals_predict(converted("tcn"))


def test_tcn_sites_drop_whole_channels(converted: Any, architectures: Any) -> None:
    def time_axis(entry: Any, shape: tuple[int, ...]) -> list[int]:
        # Whatever layout the node works in: the shared axis is the time axis.
        axes = [a for a in range(1, len(shape)) if shape[a] == architectures.TCN_STEPS]
        assert len(axes) == 1 and architectures.TCN_FILTERS in shape, shape
        return axes

    assert len(check_sites_in_training(converted("tcn"), time_axis, layer_rate)) == 14


# --- ConvNeXt: depthwise conv, exact GELU, StochasticDepth found by probing -------------------


def test_convnext_converts_with_grouped_convs_and_exact_gelu(converted: Any) -> None:
    c = converted("convnext_mini")
    assert_valid(c.onnx)
    groups = [next((a.i for a in n.attribute if a.name == "group"), 1)
              for n in c.onnx.graph.node if n.op_type == "Conv"]
    assert max(groups) > 1  # the depthwise convs, inlined from Keras' nested XLA function
    assert any(n.op_type == "Erf" for n in c.onnx.graph.node)  # exact GELU stays exact


def test_convnext_preprocessing_constants_are_initializers(converted: Any) -> None:
    """Normalization keeps its mean as an eager tensor the trace captures: a value, not an input."""
    c = converted("convnext_mini")
    normalization = next(layer for layer in c.keras.layers
                         if type(layer).__name__ == "Normalization")
    mean = np.asarray(normalization.mean, dtype=np.float32).ravel()
    read = {name for node in c.onnx.graph.node for name in node.input}
    holders = [i.name for i in c.onnx.graph.initializer
               if np.array_equal(onnx.numpy_helper.to_array(i).ravel(), mean)]
    assert holders and set(holders) & read
    assert not {i.name for i in c.onnx.graph.input} & set(holders)


def test_convnext_stochastic_depth_becomes_spatial_dropout(converted: Any) -> None:
    c = converted("convnext_mini")
    depth = {layer.name: layer.drop_path_rate for layer in c.keras.layers
             if type(layer).__name__ == "StochasticDepth"}
    assert len(depth) == 3  # stage 0's block has rate 0: an Activation("linear") instead
    for path, rate in depth.items():
        entry = c.layer(path)
        assert (entry.kind.value, entry.training.value) == ("random_layer", "kept")
        (site,) = entry.sites
        assert site.rule.startswith("floor_mask") and site.shared_axes == (1, 2, 3)
        assert site.ratio == pytest.approx(rate, abs=1e-9)
    assert c.report.partial_error() is None


def test_convnext_inference_equals_predict(converted: Any) -> None:
    assert_equals_predict(converted("convnext_mini"))


def test_convnext_sites_in_training_mode(converted: Any) -> None:
    c = converted("convnext_mini")

    def drop_path_rate(entry: Any, shape: tuple[int, ...]) -> float:
        return c.keras.get_layer(entry.path).drop_path_rate

    assert len(check_sites_in_training(c, all_but_batch, drop_path_rate)) == 3


# --- Bidirectional LSTM/GRU and two dropouts on one tensor --------------------------------------


def test_bidirectional_rnn_every_mask_converts(converted: Any, architectures: Any) -> None:
    c = converted("bidirectional_rnn")
    assert_valid(c.onnx)
    per_layer = {"bilstm/forward_lstm": (4, architectures.LSTM_RATES),
                 "bilstm/backward_lstm": (4, architectures.LSTM_RATES),
                 "bigru/forward_gru": (3, architectures.GRU_RATES),
                 "bigru/backward_gru": (3, architectures.GRU_RATES)}
    for path, (gates, (dropout, recurrent)) in per_layer.items():
        ratios = sorted(round(s.ratio, 6) for s in c.layer(path).sites)
        # One independent mask per gate, for the input and for the recurrent state.
        assert ratios == sorted([dropout] * gates + [recurrent] * gates), path
    for path in ("twin_a", "twin_b"):
        (site,) = c.layer(path).sites
        assert site.becomes == "Dropout" and site.ratio == pytest.approx(architectures.TWIN_RATE)
    assert c.report.partial_error() is None


def test_rnn_gates_get_independent_masks(converted: Any) -> None:
    """Each Loop (one RNN direction) reads a different mask tensor per gate, drawn apart
    (as a loop input, or from the outer scope once the loop is portable)."""
    from spatialdrop_onnx.graph import names_read

    c = converted("bidirectional_rnn")
    producers = {o: n for n in c.onnx.graph.node for o in n.output}
    loops = [n for n in c.onnx.graph.node if n.op_type == "Loop"]
    masks_per_loop = sorted(
        len({i for i in names_read(loop)
             if i in producers and producers[i].op_type == sd.OP_TYPE})
        for loop in loops)
    assert masks_per_loop == [6, 6, 8, 8]  # GRU: 3 + 3 gates, LSTM: 4 + 4
    nodes, runs = training_runs(c, batch=64, runs=1)
    forward = {s.name for s in c.layer("bilstm/forward_lstm").sites
               if s.ratio == pytest.approx(0.2)}
    masks = [runs[0][n.output[0]] for n in nodes if n.name in forward]
    assert len(masks) == 4
    for i in range(4):
        for j in range(i + 1, 4):
            assert not np.array_equal(masks[i], masks[j]), "two gates share one mask"


def test_twin_dropouts_on_one_tensor_are_independent(converted: Any, architectures: Any) -> None:
    c = converted("bidirectional_rnn")
    twins = {s.name for path in ("twin_a", "twin_b") for s in c.layer(path).sites}
    nodes, runs = training_runs(c, batch=64, runs=1)
    a, b = (n for n in nodes if n.name in twins)
    assert a.input[0] == b.input[0]  # both read the same tensor
    data = runs[0][a.input[0]]
    keep_a = assert_elementwise_dropout(data, runs[0][a.output[0]], architectures.TWIN_RATE)
    keep_b = assert_elementwise_dropout(data, runs[0][b.output[0]], architectures.TWIN_RATE)
    assert not np.array_equal(keep_a, keep_b)


def test_bidirectional_rnn_inference_equals_predict(converted: Any) -> None:
    assert_equals_predict(converted("bidirectional_rnn"))


def test_rnn_masks_in_training_mode(converted: Any, architectures: Any) -> None:
    """Each RNN mask is a SpatialDropout of ones: entries 0 or 1/(1-rate), none shared."""
    def elementwise(entry: Any, shape: tuple[int, ...]) -> list[int]:
        return []

    def rate(entry: Any, shape: tuple[int, ...]) -> float:
        if entry.kind.value != "rnn_dropout":
            return entry.rate
        dropout, recurrent = (architectures.LSTM_RATES if entry.path.startswith("bilstm")
                              else architectures.GRU_RATES)
        # A recurrent mask multiplies the state (units wide), an input mask the input.
        return recurrent if shape[-1] == architectures.RNN_UNITS else dropout

    paths = check_sites_in_training(converted("bidirectional_rnn"), elementwise, rate)
    assert len(paths) == 6


# --- The report holds typed Sites, strict JSON -------------------------------------------------


def test_report_holds_the_sites_per_layer(converted: Any) -> None:
    report = converted("convnext_mini").report
    for entry in report.layers:
        assert entry.sites and all(isinstance(s, Site) and s.kind is Kind.RANDOM_SUBGRAPH
                                   for s in entry.sites)
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    for entry, listed in zip(report.layers, data["sites"], strict=True):
        assert listed["path"] == entry.path
        assert [s["name"] for s in listed["onnx_sites"]] == [s.name for s in entry.sites]
        assert listed["converted_to"] == ["SpatialDropout(shared_axes=[1, 2, 3], "
                                          f"ratio={entry.sites[0].ratio:g})"]


# --- Randomness that cannot be kept: named, exit 5 ---------------------------------------------


@pytest.fixture(scope="session")
def custom_cli(architectures: Any, workdir: Path) -> dict[str, Any]:
    """The custom-random model through the CLI: ``--json`` and the text summary."""
    model = architectures.custom_random()
    source = workdir / "custom_random.keras"
    model.save(source)
    as_json = run_cli("convert", source, "-o", workdir / "custom_json.onnx", "--json")
    as_text = run_cli("convert", source, "-o", workdir / "custom_text.onnx")
    return {"json": as_json, "text": as_text, "keras": model,
            "onnx": onnx.load(workdir / "custom_json.onnx")}


def test_unclassifiable_random_layer_is_named_everywhere(custom_cli: dict[str, Any]) -> None:
    for result in (custom_cli["json"], custom_cli["text"]):
        assert result.code == ExitCode.PARTIAL, result.stderr
        error = result.stderr.strip().splitlines()[-1]
        assert error.startswith("spatialdrop-onnx: error: wrote ") and "Traceback" not in error
        assert "'noise' (MultiplicativeNoise)" in error
    report = custom_cli["json"].report
    assert report["partial"] is True
    sites = {s["path"]: s for s in report["sites"]}
    assert (sites["noise"]["kind"], sites["noise"]["training"]) == ("random_layer",
                                                                    "inference-only")
    assert "could not be converted" in sites["noise"]["note"]
    assert any(w.startswith("noise (MultiplicativeNoise)") for w in report["warnings"])
    assert any(line.startswith("warning: noise (MultiplicativeNoise)")
               for line in custom_cli["json"].stderr.splitlines())  # --json: on stderr too
    summary = custom_cli["text"].stdout
    assert "noise (MultiplicativeNoise, random) -> INFERENCE ONLY" in summary
    assert "warning: noise (MultiplicativeNoise)" in summary


def test_augmentation_gets_a_note_and_the_rest_converts(custom_cli: dict[str, Any]) -> None:
    report = custom_cli["json"].report
    sites = {s["path"]: s for s in report["sites"]}
    assert (sites["flip"]["kind"], sites["flip"]["training"]) == ("augmentation", "skipped")
    assert any(n.startswith("flip (RandomFlip): augmentation layer") for n in report["notes"])
    assert "note: flip (RandomFlip): augmentation layer" in custom_cli["text"].stdout
    assert sites["drop_path"]["training"] == "kept"  # a user's DropPath, found by probing
    assert sites["drop_path"]["converted_to"] == ["SpatialDropout(shared_axes=[1, 2, 3], "
                                                  "ratio=0.25)"]
    assert sites["head_dropout"]["converted_to"] == ["Dropout(ratio=0.2)"]
    model = custom_cli["onnx"]  # written although partial
    assert_valid(model)
    x = np.random.default_rng(9).standard_normal((4, 8, 8, 3)).astype(np.float32)
    want = custom_cli["keras"].predict(x, verbose=0)
    got = sd.inference_session(model).run(None, {"image": x})[0]
    assert float(np.max(np.abs(got - want))) <= RELATIVE_TOLERANCE * float(np.max(np.abs(want)))


def test_layer_whose_training_mode_changes_its_output_falls_back(converted: Any) -> None:
    c = converted("forced_training_changes_output")
    entry = c.layer("norm_drop_path")
    assert (entry.kind.value, entry.training.value) == ("random_layer", "inference-only")
    assert "changed the model's non-random output" in entry.note
    assert c.layer("drop_path").training.value == "kept"  # another class keeps its site
    error = c.report.partial_error()
    assert error is not None and error.exit_code == ExitCode.PARTIAL
    assert "'norm_drop_path' (NormThenDropPath)" in str(error)
    assert_valid(c.onnx)
    assert_equals_predict(c)


def test_framework_site_count_sees_every_draw(architectures: Any, converted: Any) -> None:
    """The evidence counts framework sites on TensorFlow's own training-mode trace."""
    c = converted("tcn")
    assert architectures.framework_draws(c.keras, c.sample(2)) == 14
    assert math.isclose(c.report.max_abs_diff_vs_keras or 0.0, 0.0, abs_tol=1e-3)
