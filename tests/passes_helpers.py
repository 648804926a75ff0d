"""Helpers shared by the graph-pass tests: build, check and run small models."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

import numpy as np
import onnx
import onnx.parser
import onnxruntime as ort
from dropout_checks import assert_structurally_valid

from spatialdrop_onnx import spec
from spatialdrop_onnx.graph import iter_nodes

ort.set_default_logger_severity(3)

MODELS = Path(__file__).resolve().parents[1] / "models"


def load_script(name: str, folder: str = "models") -> ModuleType:
    """Import ``<folder>/<name>.py`` (models/ and scripts/ are not packages)."""
    if name in sys.modules:
        return sys.modules[name]
    path = MODELS.parent / folder / f"{name}.py"
    spec_ = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec_)
    sys.modules[name] = module  # dataclasses look their module up while being defined
    spec_.loader.exec_module(module)
    return module

OUR_DOMAIN = spec.DOMAIN
RANDOM_OPS = {"RandomUniform", "RandomUniformLike", "StatelessRandomUniformV2",
              "RandomNormal", "RandomNormalLike", "Bernoulli"}


def parse(text: str) -> onnx.ModelProto:
    """An ONNX model from the textual syntax, checked."""
    model = onnx.parser.parse_model(text)
    onnx.checker.check_model(model, full_check=True)
    return model


def random_mask(data: str = "x", out: str = "y", noise: str = "[2, 3, 1, 1]",
                uniform: str | None = None, tag: str = "") -> str:
    """ONNX text of the generic random-mask site ``out`` = dropout(``data``): keep below
    ``k``, scale by ``s`` (constants the caller defines). ``uniform`` replaces the
    ``RandomUniform`` line; ``tag`` prefixes the site's own value names."""
    u = f"{tag}u"
    return f"""{uniform or f"{u} = RandomUniform<shape = {noise}>()"}
            {tag}keep = Less({u}, k)
            {tag}m = Cast<to = 1>({tag}keep)
            {tag}ms = Mul({tag}m, s)
            {out} = Mul({data}, {tag}ms)"""


def full_check(model: onnx.ModelProto) -> None:
    onnx.checker.check_model(model, full_check=True)


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def run(model: onnx.ModelProto | ort.InferenceSession,
        feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run in onnxruntime, passing only the feeds the model takes (inputs or overridable).

    Pass a session to run several times: onnxruntime seeds unseeded random ops
    the same way in every new session, so masks differ per run, not per session.
    """
    sess = model if isinstance(model, ort.InferenceSession) else session(model)
    names = {i.name for i in sess.get_inputs()} | {
        i.name for i in sess.get_overridable_initializers()}
    return sess.run(None, {k: v for k, v in feeds.items() if k in names})


def assert_same(a: Iterable[np.ndarray], b: Iterable[np.ndarray]) -> None:
    """Bit-identical outputs (same dtype, shape and bytes)."""
    a, b = list(a), list(b)
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape, (x.dtype, x.shape, y.dtype, y.shape)
        assert x.tobytes() == y.tobytes(), np.abs(x.astype(float) - y.astype(float)).max()


def all_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Every node: main graph, subgraphs, and model-local functions (not our op's bodies)."""
    return [node for _, node in iter_nodes(model)]


def op_types(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in all_nodes(model)]


def count(model: onnx.ModelProto, op_type: str) -> int:
    return sum(1 for n in all_nodes(model) if n.op_type == op_type)


def assert_no_dropout(model: onnx.ModelProto) -> None:
    """No Dropout, SpatialDropout, random op, our functions or our opset import left."""
    types = set(op_types(model))
    assert not types & ({"Dropout", spec.OP_TYPE} | RANDOM_OPS), types
    assert not any(f.domain == OUR_DOMAIN for f in model.functions)
    assert not any(o.domain == OUR_DOMAIN for o in model.opset_import)


def flag(value: bool) -> np.ndarray:
    return np.array(value)


def sample(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Values in [1, 2) so a dropped element (0) is recognisable."""
    return (np.random.default_rng(seed).random(shape) + 1.0).astype(np.float32)


def check_noise_slices(data: np.ndarray, output: np.ndarray, ratio: float,
                       shared_axes: list[int]) -> np.ndarray:
    """Training-mode structure (see dropout_checks); returns the keeps, noise-shaped."""
    return assert_structurally_valid(data, output, ratio, shared_axes)
