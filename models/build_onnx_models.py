#!/usr/bin/env python
"""Writes the small ONNX models shipped in models/onnx/: real training-mode exports.

They are what users meet in the wild, kept in the repo so the CLI can be tried on them
without TensorFlow or PyTorch (and tested against in tests/test_shipped_models.py):

- keras_conv2d_spatial2d.onnx — Keras 3 Conv2D → SpatialDropout2D(0.3) through tf2onnx:
  StatelessRandomUniformV2 left in the graph, which onnxruntime rejects until rewritten;
- keras_gru.onnx — GRU(dropout=0.3, recurrent_dropout=0.3): constant stateless masks;
- torch_dropout2d_dynamic.onnx / torch_droppath_dynamic.onnx — PyTorch dynamo exports,
  dynamic batch, anonymous RandomUniformLike mask subgraphs.

    .venv/bin/python models/build_onnx_models.py
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from export_keras import export_keras_models  # noqa: E402
from export_torch import export_torch_models  # noqa: E402

SHIPPED = {
    "keras_conv2d_spatial2d": ("keras", "conv2d_spatial2d_last"),
    "keras_gru": ("keras", "gru"),
    "torch_dropout2d_dynamic": ("torch", "dropout2d_dynamic"),
    "torch_droppath_dynamic": ("torch", "droppath_dynamic"),
}


def main() -> int:
    out = HERE / "onnx"
    out.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        keras = export_keras_models(tmp, [n for f, n in SHIPPED.values() if f == "keras"])
        torch = export_torch_models(tmp, [n for f, n in SHIPPED.values() if f == "torch"])
        for shipped, (framework, name) in SHIPPED.items():
            export = (keras if framework == "keras" else torch)[name]
            shutil.copyfile(export.path, out / f"{shipped}.onnx")
            print(f"wrote {out / shipped}.onnx")
    return 0


if __name__ == "__main__":
    sys.exit(main())
