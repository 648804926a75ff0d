#!/usr/bin/env python
"""Real Keras 3 → tf2onnx exports in training mode, for the rewrite-rule tests.

Each small Keras model is traced as ``tf.function(lambda x: model(x,
training=True))`` and converted with ``tf2onnx.convert.from_function``
(``from_keras`` fails on Keras 3). The dropout layers therefore reach the
ONNX graph as tf2onnx's stateless-RNG lowering (see
``docs/passes.md``/exporter notes). Alongside each model the script keeps a
sample input and Keras' own inference output (``training=False``) so a test
can check that the rewritten model with training off computes the same.

    .venv/bin/python models/export_keras.py OUT_DIR     # writes OUT_DIR/<name>.onnx + .npz
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

OPSET = 17


@dataclass
class KerasExport:
    """One exported model and what the rules are expected to find in it."""

    name: str
    path: Path
    sample: np.ndarray
    inference: np.ndarray
    #: Per site: shared axes in the layout of the tensor SpatialDropout reads
    #: ([] = element-wise Dropout); None for a near miss that must not convert.
    expected_axes: list[list[int]] | None
    #: Shared axes in the model *output's* layout when the dropout is the last
    #: layer (for the structural check in training mode), else None.
    output_axes: list[int] | None = None
    ratio: float = 0.3
    notes: dict = field(default_factory=dict)


def _specs() -> list[tuple]:
    """(name, layers(keras.layers) -> list, input shape without batch, expected axes,
    output axes)."""
    return [
        ("spatial1d", lambda L: [L.SpatialDropout1D(0.3)], (6, 4), [[1]], [1]),
        ("conv1d_spatial1d", lambda L: [L.Conv1D(3, 3), L.SpatialDropout1D(0.3)],
         (7, 4), [[1]], [1]),
        ("spatial2d_last", lambda L: [L.SpatialDropout2D(0.3)], (5, 6, 4), [[1, 2]], [1, 2]),
        ("spatial2d_first", lambda L: [L.SpatialDropout2D(0.3, data_format="channels_first")],
         (4, 5, 6), [[2, 3]], [2, 3]),
        # Conv2D is NCHW inside ONNX: tf2onnx puts a Transpose between the
        # scaled tensor and the mask, so the site reads the NCHW conv output.
        ("conv2d_spatial2d_last",
         lambda L: [L.Conv2D(3, 3, padding="same"), L.SpatialDropout2D(0.3)],
         (5, 6, 4), [[2, 3]], [1, 2]),
        ("spatial3d_last", lambda L: [L.SpatialDropout3D(0.3)], (3, 4, 5, 2),
         [[1, 2, 3]], [1, 2, 3]),
        ("spatial3d_first", lambda L: [L.SpatialDropout3D(0.3, data_format="channels_first")],
         (2, 3, 4, 5), [[2, 3, 4]], [2, 3, 4]),
        ("conv3d_spatial3d", lambda L: [L.Conv3D(3, 1), L.SpatialDropout3D(0.3)],
         (3, 4, 5, 2), [[2, 3, 4]], [1, 2, 3]),
        ("dropout", lambda L: [L.Dropout(0.3)], (5, 6, 4), [[]], []),
        ("dropout_noise_shape", lambda L: [L.Dropout(0.3, noise_shape=(None, 1, 1, 4))],
         (5, 6, 4), [[1, 2]], [1, 2]),
        ("cnn",
         lambda L: [L.Conv2D(4, 3, padding="same", activation="relu"), L.SpatialDropout2D(0.3),
                    L.Flatten(), L.Dense(8), L.Dropout(0.3), L.Dense(2)],
         (6, 6, 3), [[2, 3], []], None),
        ("gru", lambda L: [L.GRU(3, dropout=0.3, recurrent_dropout=0.3)], (7, 4),
         [[], []], None),
        ("lstm", lambda L: [L.LSTM(3, dropout=0.3, recurrent_dropout=0.3)], (7, 4),
         [[], []], None),
        # Near misses: random masks that are not inverted dropout (must stay unconverted).
        ("gaussian_dropout", lambda L: [L.GaussianDropout(0.3)], (5, 4), None, None),
        ("alpha_dropout", lambda L: [L.AlphaDropout(0.3)], (5, 4), None, None),
    ]


def export_keras_models(out_dir: str | os.PathLike, names: list[str] | None = None
                        ) -> dict[str, KerasExport]:
    """Export every model (or those in ``names``) to ``out_dir``; returns them by name."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import onnx
    import tensorflow as tf
    import tf2onnx

    tf.get_logger().setLevel("ERROR")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    exports = {}
    for name, make, shape, expected, output_axes in _specs():
        if names is not None and name not in names:
            continue
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input(shape), *make(keras.layers)])
        spec = (tf.TensorSpec((None, *shape), tf.float32, name="x"),)
        traced = tf.function(lambda x, model=model: model(x, training=True))
        proto, _ = tf2onnx.convert.from_function(traced, input_signature=spec, opset=OPSET)
        path = out / f"{name}.onnx"
        onnx.save(proto, path)
        sample = (rng.random((2, *shape)) + 1.0).astype(np.float32)
        inference = np.asarray(model(sample, training=False))
        np.savez(out / f"{name}.npz", sample=sample, inference=inference)
        exports[name] = KerasExport(name, path, sample, inference, expected, output_axes)
    return exports


def main(argv: list[str]) -> None:
    out = Path(argv[1]) if len(argv) > 1 else Path(__file__).parent / "keras_exports"
    for export in export_keras_models(out).values():
        print(f"{export.path}  expected shared axes {export.expected_axes}")


if __name__ == "__main__":
    main(sys.argv)
