#!/usr/bin/env python
"""Real PyTorch dynamo exports in training mode, for the rewrite-rule tests.

Each module is exported with ``torch.onnx.export(module.train(), (x,),
dynamo=True, training=torch.onnx.TrainingMode.TRAINING)`` (optionally with a
dynamic batch dim), which writes ``nn.Dropout1d/2d/3d`` and DropPath as
``RandomUniformLike(ConstantOfShape(noise)) → Less → Cast → Div/Mul`` and
``nn.Dropout`` as ONNX ``Dropout(x, p, true)``. Alongside each model the
script keeps a sample input and the module's eval-mode output.

    .venv/bin/python models/export_torch.py OUT_DIR
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class TorchExport:
    """One exported model and what the rules are expected to find in it."""

    name: str
    path: Path
    sample: np.ndarray
    inference: np.ndarray
    #: Shared axes per random site ([] = element-wise); None: a near miss.
    expected_axes: list[list[int]] | None
    #: Shared axes in the output's layout when the dropout is the last op.
    output_axes: list[int] | None
    ratio: float
    dynamic: bool
    #: ONNX Dropout nodes (nn.Dropout) expected to be rewired to training_mode.
    onnx_dropouts: int = 0


def _modules(torch):  # noqa: ANN001, ANN202 - torch is imported lazily
    nn = torch.nn

    class DropPath(nn.Module):
        """Stochastic depth as timm writes it: one decision per sample, divide after."""

        def __init__(self, p: float) -> None:
            super().__init__()
            self.p = p

        def forward(self, x):  # noqa: ANN001, ANN202
            if not self.training:
                return x
            keep = 1.0 - self.p
            mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
            return x * mask / keep

    class ConvThen(nn.Module):
        def __init__(self, after: nn.Module) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)
            self.after = after

        def forward(self, x):  # noqa: ANN001, ANN202
            return self.after(self.conv(x))

    class Mixed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.drop2d = nn.Dropout2d(0.3)
            self.path = DropPath(0.2)
            self.fc = nn.Linear(4 * 5 * 5, 6)
            self.drop = nn.Dropout(0.3)

        def forward(self, x):  # noqa: ANN001, ANN202
            y = torch.relu(self.drop2d(self.conv(x)))
            y = self.path(y) + y
            return self.drop(self.fc(y.flatten(1)))

    class Unscaled(nn.Module):
        """Near miss: a channel mask without the 1/(1-p) scaling."""

        def forward(self, x):  # noqa: ANN001, ANN202
            mask = (torch.rand(x.shape[0], x.shape[1], 1, 1) < 0.7).to(x.dtype)
            return x * mask

    class Grows(nn.Module):
        """Near miss: the mask broadcasts a size-1 dim to 3 (output shape changes)."""

        def forward(self, x):  # noqa: ANN001, ANN202
            mask = (torch.rand(x.shape[0], x.shape[1], 3, 1) < 0.7).to(x.dtype) / 0.7
            return x * mask

    return DropPath, ConvThen, Mixed, Unscaled, Grows


def _specs(torch) -> list[tuple]:  # noqa: ANN001
    """(name, module, input shape, dynamic batch, expected axes, output axes, ratio, #Dropout)."""
    nn = torch.nn
    DropPath, ConvThen, Mixed, Unscaled, Grows = _modules(torch)  # noqa: N806
    return [
        ("dropout1d", nn.Dropout1d(0.3), (2, 3, 5), False, [[2]], [2], 0.3, 0),
        ("dropout2d_static", ConvThen(nn.Dropout2d(0.3)), (2, 3, 5, 5), False, [[2, 3]],
         [2, 3], 0.3, 0),
        ("dropout2d_dynamic", ConvThen(nn.Dropout2d(0.3)), (2, 3, 5, 5), True, [[2, 3]],
         [2, 3], 0.3, 0),
        ("dropout3d", nn.Dropout3d(0.3), (2, 3, 4, 5, 5), False, [[2, 3, 4]], [2, 3, 4], 0.3, 0),
        ("droppath_static", ConvThen(DropPath(0.2)), (2, 3, 5, 5), False, [[1, 2, 3]],
         [1, 2, 3], 0.2, 0),
        ("droppath_dynamic", ConvThen(DropPath(0.2)), (2, 3, 5, 5), True, [[1, 2, 3]],
         [1, 2, 3], 0.2, 0),
        ("dropout", nn.Dropout(0.3), (2, 3, 5), False, [], [], 0.3, 1),
        ("mixed", Mixed(), (2, 3, 5, 5), True, [[2, 3], [1, 2, 3]], None, 0.3, 1),
        ("near_unscaled", Unscaled(), (2, 3, 5, 5), False, None, None, 0.3, 0),
        ("near_grows", Grows(), (2, 3, 1, 5), False, None, None, 0.3, 0),
    ]


def export_torch_models(out_dir: str | os.PathLike, names: list[str] | None = None
                        ) -> dict[str, TorchExport]:
    """Export every module (or those in ``names``) to ``out_dir``; returns them by name."""
    import onnx
    import torch

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    exports = {}
    for name, module, shape, dynamic, expected, output_axes, ratio, dropouts in _specs(torch):
        if names is not None and name not in names:
            continue
        torch.manual_seed(0)
        for parameter in module.parameters():
            torch.nn.init.uniform_(parameter, -0.5, 0.5)
        sample = torch.rand(shape) + 1.0
        kwargs = {}
        if dynamic:
            kwargs["dynamic_shapes"] = {"x" if not isinstance(module, torch.nn.Dropout1d)
                                        else "input": {0: torch.export.Dim("batch")}}
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module.train(), (sample,), dynamo=True, verbose=False,
                training=torch.onnx.TrainingMode.TRAINING, **kwargs)
        path = out / f"{name}.onnx"
        onnx.save(program.model_proto, path)
        with torch.no_grad():
            inference = module.eval()(sample).numpy()
        exports[name] = TorchExport(name, path, sample.numpy(), inference, expected,
                                    output_axes, ratio, dynamic, dropouts)
    return exports


def main(argv: list[str]) -> None:
    out = Path(argv[1]) if len(argv) > 1 else Path(__file__).parent / "torch_exports"
    for export in export_torch_models(out).values():
        print(f"{export.path}  expected shared axes {export.expected_axes}")


if __name__ == "__main__":
    main(sys.argv)
