"""PyTorch export helper: dropout kept and switchable, everything else in eval form."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import require
from dropout_checks import assert_drop_fraction, assert_structurally_valid
from op_models import ort_session

import spatialdrop_onnx as sd


def _modules():
    torch = require("torch")

    class DropPath(torch.nn.Module):
        """Stochastic depth as timm writes it."""

        def __init__(self, p: float) -> None:
            super().__init__()
            self.p = p

        def forward(self, x):  # noqa: ANN001, ANN201
            if not self.training:
                return x
            keep = 1 - self.p
            r = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
            return x * r / keep

    class ConvBnDrop(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3)
            self.bn = torch.nn.BatchNorm2d(8)
            self.drop = torch.nn.Dropout2d(0.25)

        def forward(self, x):  # noqa: ANN001, ANN201
            return self.drop(self.bn(self.conv(x)))

    torch.manual_seed(0)
    conv_bn = ConvBnDrop()
    conv_bn.bn.running_mean.uniform_(-1, 1)  # BN in training form would not use these
    conv_bn.bn.running_var.uniform_(0.5, 2)
    return torch, {
        "conv_bn_dropout2d": (conv_bn, (4, 3, 9, 9), None),
        "dropout1d": (torch.nn.Dropout1d(0.3), (16, 64, 5), [2]),
        "dropout3d": (torch.nn.Dropout3d(0.5), (4, 32, 2, 3, 3), [2, 3, 4]),
        "droppath": (DropPath(0.2), (256, 4, 3), [1, 2]),
    }


@pytest.fixture(scope="module")
def exported():
    torch, modules = _modules()
    from spatialdrop_onnx.converters.torch_export import export

    models = {}
    for name, (module, shape, _) in modules.items():
        models[name] = export(module, (torch.randn(*shape),))
    return torch, modules, models


@pytest.mark.parametrize("name", ["conv_bn_dropout2d", "dropout1d", "dropout3d", "droppath"])
def test_exported_model_is_valid_portable_and_uses_the_op(exported, name):
    _, _, models = exported
    model = models[name]
    onnx.checker.check_model(model, full_check=True)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count(sd.OP_TYPE) == 1
    assert "RandomUniformLike" not in ops
    assert [i.name for i in model.graph.input][-1] == "training_mode"
    assert any(f.name == sd.OP_TYPE for f in model.functions)


@pytest.mark.parametrize("name", ["dropout1d", "dropout3d", "droppath"])
def test_training_mode_drops_shared_slices_at_the_rate(exported, name):
    torch, modules, models = exported
    module, shape, axes = modules[name]
    ratio = module.p
    batch = shape[0] + 3  # dynamic batch: not the export's
    data = (np.random.default_rng(1).random((batch, *shape[1:])) + 1).astype(np.float32)
    session = ort_session(models[name])
    data_name = models[name].graph.input[0].name  # torch's forward argument name
    keeps = []
    for _ in range(2):
        output = session.run(None, {data_name: data, "training_mode": np.array(True)})[0]
        keeps.append(assert_structurally_valid(data, output, ratio, axes))
    assert_drop_fraction(keeps[0], ratio)
    assert (keeps[0] != keeps[1]).any()
    np.testing.assert_array_equal(session.run(None, {data_name: data})[0], data)


def test_batchnorm_stays_in_inference_form(exported):
    torch, modules, models = exported
    module = modules["conv_bn_dropout2d"][0].eval()
    data = np.random.default_rng(2).standard_normal((5, 3, 9, 9)).astype(np.float32)
    with torch.no_grad():
        expected = module(torch.from_numpy(data)).numpy()
    session = ort_session(models["conv_bn_dropout2d"])
    np.testing.assert_allclose(session.run(None, {"x": data})[0], expected, atol=1e-5)
    trained = session.run(None, {"x": data, "training_mode": np.array(True)})[0]
    for n in range(5):
        for c in range(8):
            assert (trained[n, c] == 0).all() or np.allclose(trained[n, c], expected[n, c] / 0.75,
                                                             atol=1e-5)


def test_module_flags_restored_after_export(exported):
    _, modules, _ = exported
    module = modules["conv_bn_dropout2d"][0]
    module.train()
    from spatialdrop_onnx.converters.torch_export import _only_dropout_training

    with _only_dropout_training(module, frozenset({"Dropout2d"})):
        assert not module.bn.training and module.drop.training
    assert module.bn.training and module.training
