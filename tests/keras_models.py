"""Small real Keras 3 models for the converter tests (built in seconds, never trained).

Each dropout layer whose channel structure is checked is a model *output*, so
the test sees exactly the tensor the layer produced.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

SEED_MODEL = Path(__file__).resolve().parents[1] / "models" / "seed_model.keras"

#: name → (layer factory, input name, rate, shared axes in the output's layout)
#: for every layer of ``dropout_zoo`` whose output keeps or drops whole slices.
#: Rate of the zoo's plain Dropout; distinct from every other rate on the same input
#: (tf2onnx merges equal ``x * 1/(1-rate)`` products of two layers into one node).
ZOO_DROPOUT_RATE = 0.15
SEQ, IMG, IMG_CF, VOL, VOL_CF = (12, 6), (5, 5, 6), (6, 5, 5), (3, 3, 3, 6), (6, 3, 3, 3)
ZOO_INPUTS = {"seq": SEQ, "img": IMG, "img_cf": IMG_CF, "vol": VOL, "vol_cf": VOL_CF}


def _zoo_layers(keras: Any) -> dict[str, tuple[Any, str, float, tuple[int, ...]]]:
    layers = keras.layers
    return {
        "sd1d": (layers.SpatialDropout1D(0.3, name="sd1d"), "seq", 0.3, (1,)),
        "sd2d": (layers.SpatialDropout2D(0.4, name="sd2d"), "img", 0.4, (1, 2)),
        "sd2d_cf": (layers.SpatialDropout2D(0.25, data_format="channels_first", name="sd2d_cf"),
                    "img_cf", 0.25, (2, 3)),
        "sd3d": (layers.SpatialDropout3D(0.5, name="sd3d"), "vol", 0.5, (1, 2, 3)),
        "sd3d_cf": (layers.SpatialDropout3D(0.35, data_format="channels_first", name="sd3d_cf"),
                    "vol_cf", 0.35, (2, 3, 4)),
        # Word dropout: one decision per time step, shared over the features.
        "word_drop": (layers.Dropout(0.2, noise_shape=(None, SEQ[0], 1), name="word_drop"),
                      "seq", 0.2, (2,)),
        "chan_drop": (layers.Dropout(0.45, noise_shape=(None, 1, 1, IMG[2]), name="chan_drop"),
                      "img", 0.45, (1, 2)),
    }


#: Spatial layers of the zoo: output name → (rate, shared axes).
ZOO_SPATIAL = {
    "sd1d": (0.3, (1,)), "sd2d": (0.4, (1, 2)), "sd2d_cf": (0.25, (2, 3)),
    "sd3d": (0.5, (1, 2, 3)), "sd3d_cf": (0.35, (2, 3, 4)),
    "word_drop": (0.2, (2,)), "chan_drop": (0.45, (1, 2)),
}
ZOO_SPATIAL_INPUT = {"sd1d": "seq", "sd2d": "img", "sd2d_cf": "img_cf", "sd3d": "vol",
                     "sd3d_cf": "vol_cf", "word_drop": "seq", "chan_drop": "img"}


def dropout_zoo(keras: Any) -> Any:
    """Every Keras dropout layer type and data format, each output being the dropped tensor."""
    inputs = {name: keras.Input(shape, name=name) for name, shape in ZOO_INPUTS.items()}
    outputs = {name: layer(inputs[source]) for name, (layer, source, _, _)
               in _zoo_layers(keras).items()}
    layers = keras.layers
    seq = inputs["seq"]
    outputs["drop"] = layers.Dropout(ZOO_DROPOUT_RATE, name="drop")(seq)
    outputs["gauss_drop"] = layers.GaussianDropout(0.3, name="gauss_drop")(seq)
    outputs["gauss_noise"] = layers.GaussianNoise(0.5, name="gauss_noise")(seq)
    outputs["alpha_drop"] = layers.AlphaDropout(0.2, name="alpha_drop")(seq)
    outputs["lstm"] = layers.LSTM(4, dropout=0.3, recurrent_dropout=0.3, return_sequences=True,
                                  name="lstm")(seq)
    outputs["no_drop"] = layers.Dropout(0.0, name="no_drop")(seq)
    # A dropout layer its wrapper calls through ``.call`` (no name scope of its own).
    outputs["td_drop"] = layers.TimeDistributed(layers.Dropout(0.1, name="inner_drop"),
                                                name="td_drop")(seq)
    return keras.Model(list(inputs.values()), list(outputs.values()), name="dropout_zoo")


def zoo_inputs(batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Values in [1, 2): never zero, so a dropped slice is recognisable."""
    rng = np.random.default_rng(seed)
    return {name: (rng.random((batch, *shape)) + 1.0).astype(np.float32)
            for name, shape in ZOO_INPUTS.items()}


def cnn_bn_model(keras: Any) -> Any:
    """Conv2D + BatchNormalization + SpatialDropout2D (an output) → Conv → BN → Dropout → Dense.

    The BatchNormalization statistics are far from the defaults, so a model
    traced with ``training=True`` everywhere (batch statistics) cannot match.
    """
    keras.utils.set_random_seed(7)
    layers = keras.layers
    image = keras.Input((16, 16, 3), name="image")
    x = layers.Conv2D(8, 3, padding="same", name="conv1")(image)
    x = layers.BatchNormalization(name="bn1")(x)
    features = layers.SpatialDropout2D(0.3, name="features")(x)
    x = layers.Activation("relu")(features)
    x = layers.Conv2D(8, 3, name="conv2")(x)
    x = layers.BatchNormalization(name="bn2")(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(0.5, name="head_dropout")(x)
    probs = layers.Dense(5, activation="softmax", name="probs")(x)
    model = keras.Model(image, [features, probs], name="cnn_bn")
    rng = np.random.default_rng(7)
    for name in ("bn1", "bn2"):
        bn = model.get_layer(name)
        channels = bn.gamma.shape[0]
        bn.set_weights([rng.uniform(0.5, 1.5, channels), rng.normal(0, 0.5, channels),
                        rng.normal(0, 1.0, channels), rng.uniform(0.5, 2.0, channels)])
    return model


def nested_model(keras: Any) -> Any:
    """Dropout two levels deep inside a registered custom layer (keras-tcn style)."""
    import keras_custom_layers as custom

    keras.utils.set_random_seed(3)
    sequence = keras.Input((16, 4), name="sequence")
    x = keras.layers.Conv1D(8, 1, name="project")(sequence)
    x = custom.ResidualStack(8, 0.3, blocks=2, name="tcn")(x)
    x = keras.layers.GlobalAveragePooling1D()(x)
    out = keras.layers.Dense(3, name="head")(x)
    return keras.Model(sequence, out, name="nested")


def unconvertible_model(keras: Any) -> Any:
    """A layer whose TensorFlow op (Erfinv) tf2onnx cannot convert."""
    import keras_custom_layers as custom

    x = keras.Input((4,), name="x")
    y = custom.InverseErf(name="inverse_erf")(keras.layers.Dense(4, name="dense")(x))
    return keras.Model(x, y)


def lambda_model(keras: Any, sentinel: Path) -> Any:
    """A Lambda layer whose Python code creates ``sentinel`` whenever it runs.

    The lambda is self-contained (the path is a constant in its code), as an
    attacker's would be: Keras stores its bytecode in the .keras file.
    """
    payload = eval(  # noqa: S307 - builds the attack payload under test
        f"lambda t: (__import__('pathlib').Path({str(sentinel)!r}).write_text('ran'), t)[1]")
    x = keras.Input((3,), name="x")
    y = keras.layers.Lambda(payload, name="payload")(x)
    return keras.Model(x, y)


def tiny_dense_model(keras: Any) -> Any:
    """Sequential Dense -> Dropout -> Dense: quick to save as .h5 or SavedModel."""
    keras.utils.set_random_seed(5)
    return keras.Sequential([
        keras.Input((4,), name="x"),
        keras.layers.Dense(6, activation="relu", name="hidden"),
        keras.layers.Dropout(0.25, name="dropout"),
        keras.layers.Dense(2, name="out"),
    ], name="tiny")
