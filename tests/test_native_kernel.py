"""The native ONNX Runtime kernel: bit-identical to the numpy reference, structurally
and statistically valid, and refusing bad input with onnxruntime errors."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from dropout_checks import (
    DTYPES,
    assert_drop_fraction,
    assert_identity,
    assert_structurally_valid,
    noise_shape_of,
    sample_data,
)
from native_helpers import assert_bits_equal, native_options, require_native, run
from onnx import TensorProto
from onnx import helper as oh
from onnx.reference import ReferenceEvaluator
from op_models import ONNX_TYPES, dropout_model, ort_session
from optional import require

import spatialdrop_onnx as sd
from spatialdrop_onnx import bench, reference, spec

# (shape, shared_axes): ranks 2-5, default, negative, empty, size-1 axes.
CASES = [
    ((5, 12), None),
    ((5, 12), [-1]),
    ((3, 6, 7), [1]),
    ((3, 6, 7), []),
    ((3, 6, 4, 4), None),
    ((3, 6, 4, 4), [0, -1]),
    ((2, 4, 3, 3, 3), [-1, 1]),
    ((2, 4, 3, 3, 5), [2, 3, 4]),
    ((2, 3, 1, 4, 1), [4]),
]

# Before 1.24 the kernel registers one AnyFloat registration per ratio type
# (ops/register.cc), so some refusals come at run time instead of session creation.
_ORT_VERSION = tuple(int(part) for part in ort.__version__.split(".")[:2])


@pytest.fixture(scope="module")
def so() -> ort.SessionOptions:
    return native_options()


def _reference(x, ratio, training, axes, seed, call_index):
    with np.errstate(invalid="ignore", over="ignore"):
        return reference.spatial_dropout(x, ratio, training, axes, seed=seed,
                                         call_index=call_index, return_mask=True)


@pytest.mark.parametrize("with_mask", [True, False], ids=["mask", "no_mask"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("shape", "axes"), CASES)
def test_bit_identical_to_reference(so, shape, axes, dtype, with_mask):
    seed = 1000 + len(shape) * 10 + (len(axes) if axes is not None else 7)
    session = ort_session(dropout_model(shape, dtype, axes, seed=seed, with_mask=with_mask), so)
    x = sample_data(shape, DTYPES[dtype], seed=seed)
    for k in range(3):
        outputs = run(session, x, 0.3, True)
        expected, expected_mask = _reference(x, 0.3, True, axes, seed, k)
        assert_bits_equal(outputs[0], expected)
        if with_mask:
            np.testing.assert_array_equal(outputs[1], expected_mask)
        else:
            assert len(outputs) == 1


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize("axes", [[1], [2, 3], [], [0, 3]])
def test_bit_identical_when_split_over_threads(dtype, axes):
    """Tensors of several MB: the data pass and the random draws run as many thread-pool
    tasks whose boundaries fall inside rows (67 does not divide a task)."""
    shape, seed = (3, 40, 33, 67), 2024
    so = native_options(intra_op_num_threads=2)
    session = ort_session(dropout_model(shape, dtype, axes, seed=seed), so)
    x = sample_data(shape, DTYPES[dtype], seed=seed)
    for k in range(2):
        output, mask = run(session, x, 0.35)
        expected, expected_mask = _reference(x, 0.35, True, axes, seed, k)
        assert_bits_equal(output, expected)
        np.testing.assert_array_equal(mask, expected_mask)
    assert_identity(x, *run(session, x, 0.35, False))


SWAP_LAST_TWO = [0, 1, 3, 2]


def _sandwich_model(shape, dtype: str, axes, seed: int) -> onnx.ModelProto:
    """Transpose -> SpatialDropout -> Transpose back: the dropout's data is an intermediate
    used once, so onnxruntime (>= 1.24, which knows the output's shape) may hand the kernel
    that buffer as its output. Transpose has kernels in every float type (an arithmetic op
    would make onnxruntime run an "isolated" float16 node in float32, another kernel)."""
    elem = ONNX_TYPES[dtype]
    node = oh.make_node(sd.OP_TYPE, ["t", "ratio", "training_mode"], ["u"],
                        domain=sd.DOMAIN, seed=seed)
    node.attribute.append(oh.make_attribute("shared_axes", list(axes),
                                            attr_type=onnx.AttributeProto.INTS))
    graph = oh.make_graph(
        [oh.make_node("Transpose", ["x"], ["t"], perm=SWAP_LAST_TWO), node,
         oh.make_node("Transpose", ["u"], ["y"], perm=SWAP_LAST_TWO)],
        "sandwich",
        [oh.make_tensor_value_info("x", elem, list(shape)),
         oh.make_tensor_value_info("ratio", TensorProto.DOUBLE, []),
         oh.make_tensor_value_info("training_mode", TensorProto.BOOL, [])],
        [oh.make_tensor_value_info("y", elem, list(shape))])
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18),
                                               oh.make_opsetid(sd.DOMAIN, sd.OPSET_VERSION)])


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize("axes", [[1], [2, 3], []])
def test_bit_identical_when_run_in_place(dtype, axes):
    """Inside a graph the kernel may write over its input (MayInplace): every element is
    read before its window is written, so the bits are the reference's, in both modes."""
    shape, seed = (3, 40, 33, 67), 77
    session = ort_session(_sandwich_model(shape, dtype, axes, seed),
                          native_options(intra_op_num_threads=2))
    x = sample_data(shape, DTYPES[dtype], seed=seed)
    x_before = x.copy()
    swapped = np.ascontiguousarray(x.transpose(SWAP_LAST_TWO))
    inputs = {"x": x, "ratio": np.array(0.35, np.float64)}
    for k in range(2):
        (output,) = session.run(None, inputs | {"training_mode": np.array(True)})
        expected = _reference(swapped, 0.35, True, axes, seed, k)[0].transpose(SWAP_LAST_TWO)
        assert_bits_equal(output, np.ascontiguousarray(expected))
    (output,) = session.run(None, inputs | {"training_mode": np.array(False)})
    assert_bits_equal(output, x)
    assert_bits_equal(x, x_before)  # a graph input is never the kernel's output


def test_unnamed_unknown_dimension_stays_unknown_downstream(so):
    """Concat of two symbolic batches gives the dropout an unnamed unknown dimension. The
    kernel's shape inference must not hand it on as the value -1: onnxruntime then failed an
    assertion (SIGABRT) in the Slice after it while creating the session."""
    node = oh.make_node(sd.OP_TYPE, ["both", "ratio", "training_mode"], ["dropped"],
                        domain=sd.DOMAIN, seed=3)
    graph = oh.make_graph(
        [oh.make_node("Concat", ["x", "x"], ["both"], axis=0), node,
         oh.make_node("Slice", ["dropped", "starts", "ends", "axes"], ["y"])],
        "unnamed_dim",
        [oh.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, 8]),
         oh.make_tensor_value_info("ratio", TensorProto.DOUBLE, []),
         oh.make_tensor_value_info("training_mode", TensorProto.BOOL, [])],
        [oh.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[onnx.numpy_helper.from_array(np.array(v, np.int64), name)
                     for name, v in (("starts", [1]), ("ends", [2**62]), ("axes", [0]))])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18),
                                                oh.make_opsetid(sd.DOMAIN, sd.OPSET_VERSION)])
    session = ort_session(model, so)
    x = sample_data((3, 4, 8), np.float32)
    (y,) = session.run(None, {"x": x, "ratio": np.array(0.0), "training_mode": np.array(False)})
    np.testing.assert_array_equal(y, np.concatenate([x, x])[1:])


def test_streaming_stores_give_the_same_bits():
    """Outputs from 24 MiB on are written with non-temporal stores (ops/streaming.h). With
    the threshold at 0 every output takes that path: the bit-exact tests pass unchanged."""
    require_native()
    selection = ("bit_identical_to_reference or split_over_threads or run_in_place "
                 "or special_values or edge_ratios or all_16bit_patterns")
    env = dict(os.environ, SPATIALDROP_STREAMING_MIN_BYTES="0", CI="true")
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-k", selection, "test_native_kernel.py"],
                          cwd=Path(__file__).parent, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    counts = re.search(r"(\d+) passed", done.stdout)
    assert counts and int(counts.group(1)) >= 100 and "skipped" not in done.stdout


def test_kth_run_is_call_index_k(so):
    """Run k of a node uses call_index k, inference runs included (they count too,
    exactly as the onnx.reference op counts them)."""
    shape, axes, seed = (4, 8, 3, 3), None, 7
    model = dropout_model(shape, "float32", axes, seed=seed)
    session = ort_session(model, so)
    evaluator = ReferenceEvaluator(model, new_ops=[reference.SpatialDropout])
    x = sample_data(shape, np.dtype(np.float32))
    masks = set()
    for k in range(60):
        training = k % 5 != 3
        feeds = {"x": x, "ratio": np.array(0.5), "training_mode": np.array(training)}
        output, mask = session.run(None, feeds)
        expected, expected_mask = _reference(x, 0.5, training, axes, seed, k)
        assert_bits_equal(output, expected)
        np.testing.assert_array_equal(mask, expected_mask)
        ev_output, ev_mask = evaluator.run(None, feeds)
        assert_bits_equal(output, ev_output)
        masks.add(mask.tobytes())
    assert len(masks) > 40  # the stream moves on with every run


def test_seeded_streams_repeat_across_sessions(so):
    model = dropout_model((6, 16, 2), "float32", [2], seed=99)
    x = sample_data((6, 16, 2), np.dtype(np.float32))
    first, second = ort_session(model, so), ort_session(model, so)
    for _ in range(3):
        np.testing.assert_array_equal(run(first, x, 0.5)[1], run(second, x, 0.5)[1])


def test_seeds_wrap_like_numpy(so):
    """Negative seeds are the two's complement key, as in numpy's Philox(key=seed & 2**64-1)."""
    x = sample_data((64, 32), np.dtype(np.float64))
    for seed in (-1, -(2**63), 2**63 - 1, 0):
        session = ort_session(dropout_model((64, 32), "float64", [], seed=seed), so)
        output, mask = run(session, x, 0.5)
        expected, expected_mask = _reference(x, 0.5, True, [], seed, 0)
        assert_bits_equal(output, expected)
        np.testing.assert_array_equal(mask, expected_mask)


@pytest.mark.parametrize("ratio_type", [TensorProto.FLOAT16, TensorProto.FLOAT, TensorProto.DOUBLE])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_ratio_types(so, ratio_type, dtype):
    """ratio may be float16/float/double whatever the data type; it is used exactly."""
    model = dropout_model((8, 8, 5), dtype, None, seed=3)
    model.graph.input[1].type.tensor_type.elem_type = ratio_type
    session = ort_session(model, so)
    ratio = np.array(0.3, onnx.helper.tensor_dtype_to_np_dtype(ratio_type))
    x = sample_data((8, 8, 5), DTYPES[dtype])
    output, mask = run(session, x, ratio)
    expected, expected_mask = _reference(x, float(ratio), True, None, 3, 0)
    assert_bits_equal(output, expected)
    np.testing.assert_array_equal(mask, expected_mask)


def _check_all_bit_patterns(dtype: str) -> None:
    """Every float16/bfloat16 bit pattern (NaNs, infinities, subnormals) times several
    scales, against numpy. Also run in a subprocess without F16C."""
    storage = DTYPES[dtype]
    x = np.arange(2**16, dtype=np.uint16).view(storage).reshape(256, 256)
    session = ort_session(dropout_model(x.shape, dtype, [], seed=5), native_options())
    for k, ratio in enumerate([0.3, 0.7, 0.1, 1 / 3, 0.999]):
        output, mask = run(session, x, ratio)
        expected, expected_mask = _reference(x, ratio, True, [], 5, k)
        assert_bits_equal(output, expected)
        np.testing.assert_array_equal(mask, expected_mask)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_all_16bit_patterns(dtype):
    _check_all_bit_patterns(dtype)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_all_16bit_patterns_portable_path(dtype):
    """The same with the portable conversions (the F16C and AVX2 paths switched off)."""
    require_native()
    # conftest first: it stamps test models with an IR version the installed runtime loads.
    code = f"import conftest, test_native_kernel as t; t._check_all_bit_patterns({dtype!r})"
    env = dict(os.environ, SPATIALDROP_NO_F16C="1")
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_special_values(so, dtype):
    """NaN payloads, infinities, signed zeros and subnormals scale exactly as in numpy."""
    finfo = np.finfo(dtype)
    values = np.array([np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, finfo.tiny, finfo.tiny / 8,
                       -finfo.smallest_subnormal, finfo.max, -finfo.max, 1.5, -2.25], dtype)
    x = np.tile(values, (40, 1))
    session = ort_session(dropout_model(x.shape, dtype, [], seed=11), so)
    for k, ratio in enumerate([0.4, 0.75]):
        output, mask = run(session, x, ratio)
        expected, expected_mask = _reference(x, ratio, True, [], 11, k)
        assert_bits_equal(output, expected)


@pytest.mark.parametrize("dtype", DTYPES)
def test_edge_ratios_and_modes(so, dtype):
    shape, axes = (4, 6, 3, 3), None
    x = sample_data(shape, DTYPES[dtype])
    x[0, 0, 0, 0] = np.inf
    session = ort_session(dropout_model(shape, dtype, axes, seed=1), so)
    output, mask = run(session, x, 1.0)  # everything dropped: zeros, never 0 * inf = NaN
    assert_bits_equal(output, np.zeros_like(x))
    assert not mask.any() and mask.shape == noise_shape_of(shape, axes)
    for ratio, training in [(0.0, True), (0.5, False), (1.0, False)]:
        output, mask = run(session, x, ratio, training)
        assert_identity(x, output, mask)
        assert mask.shape == noise_shape_of(shape, axes)


@pytest.mark.parametrize(("shape", "axes"), [((0, 3, 4), [1]), ((2, 0, 4), [1]),
                                             ((2, 3, 0), None), ((1,), None), ((1, 1), [])])
def test_empty_and_single_element(so, shape, axes):
    session = ort_session(dropout_model(shape, "float32", axes, seed=2), so)
    x = sample_data(shape, np.dtype(np.float32))
    output, mask = run(session, x, 0.5)
    expected, expected_mask = _reference(x, 0.5, True, axes, 2, 0)
    assert_bits_equal(output, expected)
    np.testing.assert_array_equal(mask, expected_mask)


def _node_model(inputs: list[str], outputs: list[str], **attrs) -> onnx.ModelProto:
    node = oh.make_node(sd.OP_TYPE, inputs, outputs, domain=sd.DOMAIN, **attrs)
    graph_inputs = [oh.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4, 5])]
    if "t" in inputs:
        graph_inputs.append(oh.make_tensor_value_info("t", TensorProto.BOOL, []))
    graph_outputs = [oh.make_tensor_value_info(name, TensorProto.FLOAT if i == 0 else
                                               TensorProto.BOOL, None)
                     for i, name in enumerate(outputs) if name]
    graph = oh.make_graph([node], "g", graph_inputs, graph_outputs)
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18),
                                               oh.make_opsetid(sd.DOMAIN, sd.OPSET_VERSION)])


@pytest.mark.parametrize(("inputs", "outputs", "training"), [
    (["x", "", "t"], ["y"], True),       # ratio omitted in the middle: default 0.5
    (["x"], ["y", "m"], False),          # training_mode omitted: default false
    (["x", "", "t"], ["y", ""], True),   # mask named empty
])
def test_omitted_inputs_and_outputs(so, inputs, outputs, training):
    session = ort_session(_node_model(inputs, outputs, seed=4), so)
    x = sample_data((3, 4, 5), np.dtype(np.float32))
    feeds = {"x": x} | ({"t": np.array(training)} if "t" in inputs else {})
    results = session.run(None, feeds)
    expected, expected_mask = _reference(x, sd.spec.DEFAULT_RATIO, training, None, 4, 0)
    assert_bits_equal(results[0], expected)
    if len(results) > 1:
        np.testing.assert_array_equal(results[1], expected_mask)


def _without_data(inputs: list[str], output_type: int) -> onnx.ModelProto:
    node = oh.make_node(sd.OP_TYPE, inputs, ["y"], domain=sd.DOMAIN, name="no_data")
    graph = oh.make_graph([node], "g", [oh.make_tensor_value_info("r", TensorProto.FLOAT, [])],
                          [oh.make_tensor_value_info("y", output_type, [2, 3])])
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18),
                                               oh.make_opsetid(sd.DOMAIN, sd.OPSET_VERSION)])


@pytest.mark.parametrize("inputs", [["", "r"], []], ids=["empty name", "no inputs"])
@pytest.mark.parametrize("output_type", [TensorProto.FLOAT, TensorProto.DOUBLE])
def test_omitted_data_gets_the_kernels_own_message(so, inputs, output_type):
    """Every path says "SpatialDropout needs its data input", never another dtype's
    type mismatch (onnxruntime used to match the first registration: float16)."""
    model = _without_data(inputs, output_type)
    with pytest.raises(Exception) as raised:
        session = ort_session(model, so)  # >= 1.24: refused by the registrations' inference
        session.run(None, {"r": np.array(0.5, np.float32)})  # older: by the AnyFloat kernel
    message = str(raised.value)
    assert sd.spec.MISSING_DATA in message and "does not match expected type" not in message
    if _ORT_VERSION >= (1, 24):
        assert "Node (no_data) Op (SpatialDropout)" in message
    else:
        assert "SpatialDropout node. Name:'no_data'" in message
    # The schema, the reference and the function body say the same.
    with pytest.raises(onnx.shape_inference.InferenceError, match=sd.spec.MISSING_DATA):
        onnx.shape_inference.infer_shapes(model, strict_mode=True)
    with pytest.raises(sd.SpatialDropoutError, match=f"^{sd.spec.MISSING_DATA}$"):
        ReferenceEvaluator(model, new_ops=[reference.SpatialDropout]).run(
            None, {"r": np.array(0.5, np.float32)})
    with pytest.raises(sd.SpatialDropoutError, match=f"node 'no_data': {sd.spec.MISSING_DATA}"):
        sd.make_portable(model)
    with pytest.raises(sd.SpatialDropoutError, match=sd.spec.MISSING_DATA):
        reference.spatial_dropout(None)


def test_integer_data_is_refused_on_every_runtime(so):
    # onnxruntime >= 1.24 refuses it by the registrations' types when the session is
    # created; older ones run the one AnyFloat registration, which says it at run time.
    model = dropout_model((2, 3, 4), "float32", None, seed=1)
    for value in (*model.graph.input[:1], *model.graph.output[:1]):
        value.type.tensor_type.elem_type = TensorProto.INT32
    with pytest.raises(Exception) as raised:
        ort_session(model, so).run(None, {"x": np.ones((2, 3, 4), np.int32),
                                          "ratio": np.array(0.5),
                                          "training_mode": np.array(True)})
    expected = ("tensor(int32)" if _ORT_VERSION >= (1, 24) else
                "SpatialDropout needs float16, float, double or bfloat16 data")
    assert expected in str(raised.value)


def test_a_registration_with_data_still_infers_types(so):
    # The inference callback refuses only an omitted data input: a declared output of
    # another type than the data's is still onnxruntime's type error.
    model = dropout_model((2, 3, 4), "float32", None, seed=1)
    model.graph.output[0].type.tensor_type.elem_type = TensorProto.DOUBLE
    with pytest.raises(Exception, match="does not match expected type"):
        ort_session(model, so)


# --- Structure and statistics ---------------------------------------------------------


@pytest.mark.parametrize("seed", [None, 0, 12345])
@pytest.mark.parametrize(("shape", "axes", "ratio"), [
    ((64, 128, 3, 3), None, 0.3),
    ((32, 64, 50), [1], 0.5),
    ((20000,), [], 0.9),
])
def test_structure_and_drop_fraction(so, shape, axes, ratio, seed):
    session = ort_session(dropout_model(shape, "float32", axes, seed=seed), so)
    x = sample_data(shape, np.dtype(np.float32))
    keeps = []
    for _ in range(2):
        output, mask = run(session, x, ratio)
        keep = assert_structurally_valid(x, output, ratio, axes, mask)
        assert_drop_fraction(keep, ratio)
        keeps.append(keep)
    assert not np.array_equal(keeps[0], keeps[1])


def test_unseeded_streams_differ_across_sessions(so):
    model = dropout_model((8, 64, 2, 2), "float32", None)
    x = sample_data((8, 64, 2, 2), np.dtype(np.float32))
    masks = [run(ort_session(model, so), x, 0.5)[1].tobytes() for _ in range(4)]
    assert len(set(masks)) == 4


@pytest.mark.parametrize("dtype", DTYPES)
def test_same_model_with_and_without_library(so, dtype):
    """A portable model runs its function body without the library and the native
    kernel with it: both valid; only the native run matches the reference bits."""
    shape, axes, seed, ratio = (16, 32, 4, 4), None, 21, 0.4
    as_float = dtype == "bfloat16"  # the function path is fed through Casts
    portable = sd.make_portable(dropout_model(shape, dtype, axes, seed=seed, io_as_float=as_float))
    x = sample_data(shape, DTYPES[dtype])
    fed = x.astype(np.float32) if as_float else x
    for session, native in [(ort_session(portable), False), (ort_session(portable, so), True)]:
        output, mask = run(session, fed, ratio)
        output = output.astype(x.dtype) if as_float else output
        keep = assert_structurally_valid(x, output, ratio, axes, mask)
        assert_drop_fraction(keep, ratio)
        expected, _ = _reference(x, ratio, True, axes, seed, 0)
        assert np.array_equal(output.view(np.uint8), expected.view(np.uint8)) == native
        output, mask = run(session, fed, ratio, False)
        assert_identity(fed, output, mask)


# --- Registration and errors -----------------------------------------------------------


def test_library_path_and_registering_twice():
    path = require_native()
    assert Path(path).is_file()
    so = ort.SessionOptions()
    assert sd.register_kernel(so) is so
    assert sd.register_kernel(so) is so  # registered once, not twice
    x = sample_data((2, 3, 4), np.dtype(np.float32))
    model = dropout_model((2, 3, 4), seed=1)
    outputs = [run(ort_session(model, so), x)[0] for _ in range(3)]
    assert all(np.array_equal(outputs[0], o) for o in outputs)
    for _ in range(20):  # many options objects and sessions in one process
        run(ort_session(model, sd.session_options()), x)


def test_registering_twice_by_hand_is_what_session_options_prevents():
    so = ort.SessionOptions()
    so.register_custom_ops_library(require_native())
    so.register_custom_ops_library(sd.get_library_path())
    with pytest.raises(Exception, match="Domain already set"):
        ort_session(dropout_model((2, 3, 4)), so)


def test_session_without_library_names_the_op():
    with pytest.raises(Exception, match=f"{sd.DOMAIN}:{sd.OP_TYPE}.*not a registered"):
        ort_session(dropout_model((2, 3, 4)))


@pytest.mark.parametrize(("ratio", "message"), [
    (1.5, r"ratio must be in \[0, 1\], got 1\.5"),
    (-0.25, r"ratio must be in \[0, 1\], got -0\.25"),
    (float("nan"), r"ratio must be in \[0, 1\], got nan"),
    (np.array([0.1, 0.2]), "ratio must be a scalar"),
])
def test_invalid_ratio(so, ratio, message):
    session = ort_session(dropout_model((2, 3, 4), seed=1), so)
    x = sample_data((2, 3, 4), np.dtype(np.float32))
    with pytest.raises(Exception, match=message):
        run(session, x, np.asarray(ratio, np.float64))
    with pytest.raises(Exception, match=message):  # also with training off, like the reference
        run(session, x, np.asarray(ratio, np.float64), False)
    run(session, x, 0.5)  # the session still works


@pytest.mark.parametrize("ratio", [1.0000001, 2.0, 1e-05 - 1, -1e-300, 123456.789, 1e16, 3e20,
                                   -0.1, 1.0 + 2**-52, float("inf"), -float("inf")])
def test_invalid_ratio_is_written_as_python_writes_it(so, ratio):
    """The kernel's message shows the ratio as Python's repr() does, as the reference's does."""
    session = ort_session(dropout_model((2, 3, 4), seed=1), so)
    x = sample_data((2, 3, 4), np.dtype(np.float32))
    with pytest.raises(Exception) as caught:
        run(session, x, np.asarray(ratio, np.float64))
    assert f"ratio must be in [0, 1], got {ratio!r}" in str(caught.value)
    with pytest.raises(ValueError, match=re.escape(f"got {ratio!r}")):
        reference.spatial_dropout(x, ratio=ratio)


@pytest.mark.parametrize(("shape", "axes", "message"), [
    ((2, 3, 4), [3], "shared_axes value 3 is out of range for data of rank 3"),
    ((2, 3, 4), [-4], "shared_axes value -4 is out of range for data of rank 3"),
    ((2, 3, 4), [1, -2], r"shared_axes \[1, -2\] names an axis twice"),
    ((), None, "SpatialDropout needs data of rank >= 1, got rank 0"),
])
def test_invalid_axes_and_rank(so, shape, axes, message):
    session = ort_session(dropout_model(shape, "float32", axes, seed=1, with_mask=False), so)
    with pytest.raises(Exception, match=message) as raised:
        run(session, np.asarray(sample_data(shape, np.dtype(np.float32))), 0.5)
    assert "SpatialDropout node" in str(raised.value)  # an onnxruntime error, not a crash
    # The reference refuses the same input with the same words.
    with pytest.raises(sd.SpatialDropoutError, match=message):
        reference.spatial_dropout(np.ones(shape, np.float32), 0.5, True, axes)


def test_malformed_seed_attribute_is_an_error(so):
    model = dropout_model((2, 3, 4))
    model.graph.node[0].attribute.append(oh.make_attribute("seed", 1.5))
    session = ort_session(model, so)
    with pytest.raises(Exception, match="SpatialDropout"):
        run(session, sample_data((2, 3, 4), np.dtype(np.float32)))


def test_only_register_custom_ops_is_exported():
    path = require_native()
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("nm (binutils) not installed")
    listed = subprocess.run([nm, "-D", "--defined-only", path], capture_output=True, text=True,
                            check=True).stdout.split()
    exported = {word for word in listed if word.isidentifier() and not word.isupper()}
    assert exported == {"RegisterCustomOps"}


# --- onnxruntime-extensions oracle ------------------------------------------------------


@pytest.mark.parametrize(("dtype", "shape", "axes"), [
    ("float32", (4, 16, 6, 6), None),
    ("float32", (3, 20, 9), [1]),
    ("float64", (5, 7, 3), [-1, 0]),
])
def test_matches_reference_run_as_extensions_python_op(so, dtype, shape, axes):
    """The numpy reference running inside onnxruntime as a Python op and the native
    kernel, on the same input, agree bit for bit run after run."""
    require("onnxruntime_extensions")
    seed = 77
    oracle = ort_session(bench.extensions_model(shape, dtype, axes, seed,
                                                stream=f"oracle-{dtype}-{shape}-{axes}",
                                                with_mask=True),
                         bench.extensions_session_options())
    native = ort_session(dropout_model(shape, dtype, axes, seed=seed), so)
    x = sample_data(shape, DTYPES[dtype])
    for ratio in (0.25, 0.5, 0.5, 0.9):
        feeds = {"x": x, "ratio": np.array(ratio), "training_mode": np.array(True)}
        expected, expected_mask = oracle.run(None, feeds)
        output, mask = native.run(None, feeds)
        assert_bits_equal(output, expected)
        np.testing.assert_array_equal(mask, expected_mask)


@pytest.mark.parametrize(("dtype", "mantissa_bits"), [("float16", 10), ("bfloat16", 7)])
def test_scale_rounds_to_data_type_as_the_spec_says(so, dtype, mantissa_bits):
    """A ratio whose scale 1/(1-ratio) lies just above a tie of T. The spec rounds the
    double once for float16 (up, past the tie) and through float for bfloat16: float
    rounds the 2**-30 away, which leaves the exact tie, and the tie goes to even (down).
    The expected values are the spec's, worked out by hand, not a library's cast."""
    scale = 1 + 2.0 ** -(mantissa_bits + 1) + 2.0 ** -30
    ratio = 1 - 1 / scale
    by_spec = 1 + 2.0 ** -mantissa_bits if dtype == "float16" else 1.0
    assert float(spec.kept_scale(ratio, DTYPES[dtype])) == by_spec
    x = np.ones((4, 64), DTYPES[dtype])
    session = ort_session(dropout_model(x.shape, dtype, [], seed=8), so)
    output, mask = run(session, x, ratio)
    assert mask.any()
    np.testing.assert_array_equal(output[mask].astype(np.float64), by_spec)
    assert_bits_equal(output, _reference(x, ratio, True, [], 8, 0)[0])


# --- The shipped benchmark (smoke only: timings are not asserted) ----------------------


def test_bench_command_json(capsys):
    require_native()
    require("onnxruntime_extensions")
    from spatialdrop_onnx.cli import main

    code = main(["bench", "--shape", "4,8,16", "--shape", "2,3,5", "--dtype", "float32,float16",
                 "--shared-axes", "1", "--repeat", "3", "--json"])
    assert code == 0
    results = json.loads(capsys.readouterr().out)["results"]
    assert [(r["shape"], r["dtype"]) for r in results] == [
        ([4, 8, 16], "float32"), ([4, 8, 16], "float16"),
        ([2, 3, 5], "float32"), ([2, 3, 5], "float16")]
    for result in results:
        n, _, w = result["shape"]
        assert result["noise_shape"] == [n, 1, w]
        rows = {row["name"]: row for row in result["rows"]}
        sixteen_bit = result["dtype"] == "float16"
        assert list(rows) == [name for name, _ in bench.ROWS
                              if sixteen_bit or name != "typed_mul"]
        assert result["floor"] == (bench.FLOOR_NOTE if sixteen_bit else "Mul")
        if sixteen_bit:  # onnxruntime-extensions' Python ops have no float16
            assert "not float16" in rows.pop("extensions_pyop")["error"]
        for row in rows.values():
            assert row["error"] is None and row["median_ms"] > 0 and row["ratio"] > 0
            if row["runs"] == 3 and row["name"] != row["ratio_to"]:
                assert row["ratio_q1"] <= row["ratio"] <= row["ratio_q3"]
        assert rows["floor"]["ratio"] == 1.0
        assert rows["chain_infer"]["ratio_to"] == "chain_floor"
        assert [goal["name"] for goal in result["goals"]] == [
            "train", "infer", "infer_in_place", "dropout", "function"]
        for goal in result["goals"]:
            holds = (goal["value"] <= goal["limit"] if goal["kind"] == "max"
                     else goal["value"] >= goal["limit"])
            assert goal["met"] is holds


def test_ratios_are_medians_of_per_round_ratios():
    """A load spike in one round moves a row and its baseline alike: the ratio is taken
    round by round, then the median (here 1.0; the ratio of the medians would be 3.0)."""
    assert bench.per_round_ratios([1.0, 3.0, 3.0], [1.0, 1.0, 4.0]) == [0.75, 1.0, 3.0]
    result = bench.BenchResult(shape=[2], dtype="float32", shared_axes=None, noise_shape=[2],
                               ratio=0.5, repeat=3, onnxruntime=ort.__version__)
    result.rows = [bench.Row(name, label, ratio_to=bench.BASELINES.get(name, "floor"))
                   for name, label in bench.rows_for("float32")]
    times = {"floor": [1.0, 1.0, 4.0], "native_train": [1.0, 3.0, 3.0],
             "dropout_train": [20.0, 20.0, 80.0]}
    bench._summarise(result, times)
    assert result.row("native_train").ratio == 1.0
    assert (result.row("native_train").ratio_q1, result.row("native_train").ratio_q3) == (0.875,
                                                                                          2.0)
    assert result.speedups["dropout_vs_native"] == 20.0
    goals = {goal.name: goal for goal in result.goals}
    assert goals["train"].met is True and goals["dropout"].met is True
    assert goals["infer"].met is None and goals["function"].value is None


def test_bench_table_reports_rows_the_runtime_lacks():
    require_native()
    result = bench.run_bench((2, 4, 8), "bfloat16", None, repeat=1, warmup=0,
                             include_extensions=False)
    table = bench.format_table(result)
    assert result.row("native_train").median_ms is not None
    for row in result.rows:  # onnxruntime 1.32 has no bfloat16 Mul or Dropout on CPU
        assert (row.median_ms is None) == bool(row.error)
        assert (f"{row.label:<20}"[:20] in table)
    rows_part, goals_part = table.split("  goals:\n")
    assert rows_part.count("n/a") == sum(row.median_ms is None for row in result.rows)
    assert goals_part.count("n/a") == sum(goal.met is None for goal in result.goals)


def test_bench_rejects_bad_arguments(capsys):
    from spatialdrop_onnx.cli import main

    assert main(["bench", "--shape", "2,x"]) == 2
    assert main(["bench", "--shape", "2,3", "--shared-axes", "5"]) == 2
    assert "out of range" in capsys.readouterr().err


def test_bench_refuses_a_shape_that_cannot_fit(capsys):
    """Refused before anything is allocated: one line naming the GiB, usage exit code."""
    from spatialdrop_onnx.cli import main

    assert main(["bench", "--shape", "100000,100000,1000", "--no-extensions"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "GiB" in err and "100000, 100000, 1000" in err


def test_running_out_of_memory_is_one_line(capsys, monkeypatch):
    from spatialdrop_onnx.cli import main

    def exhausted(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(bench, "run_bench", exhausted)
    assert main(["bench", "--shape", "2,3", "--no-extensions"]) == 6
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "out of memory" in err


def test_session_options_changes_nothing_of_the_callers():
    """A library call does not change the caller's objects: session_options() makes new
    options; handing it yours is an error that names the call that does change them."""
    require_native()
    so = ort.SessionOptions()
    with pytest.raises(TypeError, match="register_kernel"):
        sd.session_options(so)
    fresh = sd.session_options()
    assert fresh is not so
    model = dropout_model((2, 3, 4), seed=1)
    ort_session(model, fresh)  # the kernel is there
    with pytest.raises(Exception, match="SpatialDropout"):
        ort_session(model, so)  # and not on the caller's options
