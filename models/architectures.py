#!/usr/bin/env python
"""Real Keras 3 architecture classes, small and random, shared by the tests and the evidence.

Each builder returns a Keras model with random weights and small inputs whose
BatchNormalization statistics are far from the defaults (calibrated on a batch,
then perturbed at random), so that a layer traced in the wrong mode shows up in
the numbers. The classes are the ones public models fall into
(``docs/real-models.md``):

- ``efficientnet_b0``: ``keras.applications.EfficientNetB0`` at 64×64 with its
  built-in preprocessing (``Rescaling`` + ``Normalization`` holding captured
  constants), 9 stochastic-depth ``Dropout(noise_shape=(None, 1, 1, 1))`` and
  the top ``Dropout``;
- ``tcn``: dilated causal ``Conv1D`` blocks (dilations 1…64), two
  ``SpatialDropout1D`` per residual block, skip connections: 14 consecutive sites;
- ``convnext_mini``: ``keras.applications`` ConvNeXt (depthwise ``Conv2D``,
  exact GELU, ``StochasticDepth`` layers, preprocessing) at a tiny size;
- ``bidirectional_rnn``: ``Bidirectional(LSTM)`` and ``Bidirectional(GRU)`` with
  ``dropout`` and ``recurrent_dropout``, then two ``Dropout`` layers with the same
  rate on the same tensor;
- ``custom_random``: a user's ``DropPath`` layer (found by probing), an
  unclassifiable multiplicative-noise layer, an augmentation layer;
- ``forced_training_changes_output``: a custom layer whose training mode also
  switches its own BatchNormalization to batch statistics.

Load it like the other model scripts (``tests/passes_helpers.load_script``);
importing it imports Keras.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

PACKAGE = "spatialdrop_models"
#: TensorFlow ops that draw random numbers (one per Keras random draw).
DRAW_OPS = frozenset({
    "StatelessRandomUniformV2", "StatelessRandomNormalV2", "StatelessTruncatedNormalV2",
    "StatelessRandomUniformIntV2", "StatelessRandomUniformFullIntV2", "RandomUniform",
    "RandomStandardNormal", "RandomUniformInt", "TruncatedNormal",
})


# --- Custom layers, written the way users write them -----------------------------------


@keras.saving.register_keras_serializable(package=PACKAGE)
class DropPath(keras.layers.Layer):
    """Stochastic depth as model zoos write it: ``x / keep * floor(keep + u)``, u per sample."""

    def __init__(self, rate: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rate = rate
        self.seed_generator = keras.random.SeedGenerator()

    def call(self, x: Any, training: bool | None = None) -> Any:
        if not training or self.rate == 0:
            return x
        keep = 1.0 - self.rate
        shape = (keras.ops.shape(x)[0],) + (1,) * (len(x.shape) - 1)
        mask = keras.ops.floor(keep + keras.random.uniform(shape, seed=self.seed_generator))
        return x / keep * mask

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "rate": self.rate}


@keras.saving.register_keras_serializable(package=PACKAGE)
class MultiplicativeNoise(keras.layers.Layer):
    """``x * (1 + U(-a, a))`` in training: random, but no dropout rule describes it."""

    def __init__(self, amplitude: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.amplitude = amplitude
        self.seed_generator = keras.random.SeedGenerator()

    def call(self, x: Any, training: bool | None = None) -> Any:
        if not training:
            return x
        noise = keras.random.uniform(keras.ops.shape(x), -self.amplitude, self.amplitude,
                                     seed=self.seed_generator)
        return x * (1.0 + noise)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "amplitude": self.amplitude}


@keras.saving.register_keras_serializable(package=PACKAGE)
class NormThenDropPath(keras.layers.Layer):
    """BatchNormalization, then stochastic depth drawn in this layer's own ``call``.

    Forcing this layer to training mode keeps its stochastic depth random but
    also switches its BatchNormalization to batch statistics: a different function.
    """

    def __init__(self, rate: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rate = rate
        self.norm = keras.layers.BatchNormalization(name="norm")
        self.seed_generator = keras.random.SeedGenerator()

    def build(self, input_shape: tuple) -> None:
        self.norm.build(input_shape)

    def call(self, x: Any, training: bool | None = None) -> Any:
        y = self.norm(x, training=training)
        if not training:
            return y
        keep = 1.0 - self.rate
        shape = (keras.ops.shape(y)[0],) + (1,) * (len(y.shape) - 1)
        return y / keep * keras.ops.floor(keep + keras.random.uniform(
            shape, seed=self.seed_generator))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "rate": self.rate}


# --- Helpers ----------------------------------------------------------------------------


def randomize_batchnorm(model: Any, sample: np.ndarray, seed: int, spread: float = 0.5) -> None:
    """Give every BatchNormalization statistics far from the defaults, at the data's scale.

    The moving statistics are first set to those of ``sample`` (momentum 0, one
    training-mode call), so activations stay bounded through deep stacks; then,
    with ``spread`` > 0, each mean is moved by up to ``spread`` standard
    deviations and each variance scaled by up to ``(1 ± spread)²`` at random.
    Tracing such a model with batch statistics (training mode) gives visibly
    different outputs. Deep residual stacks (EfficientNet) amplify any
    perturbation, so they use the calibrated statistics alone (``spread=0``).
    """
    norms = [layer for layer in _all_layers(model)
             if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [bn.momentum for bn in norms]
    for bn in norms:
        bn.momentum = 0.0
    model(sample, training=True)
    rng = np.random.default_rng(seed)
    for bn, momentum in zip(norms, momenta, strict=True):
        bn.momentum = momentum
        if spread:
            mean = np.asarray(bn.moving_mean)
            variance = np.asarray(bn.moving_variance)
            bn.moving_mean.assign(mean + rng.uniform(-spread, spread, mean.shape)
                                  * np.sqrt(variance))
            bn.moving_variance.assign(variance * rng.uniform(1 - spread, 1 + spread,
                                                             variance.shape) ** 2)


def _all_layers(model: Any) -> list[Any]:
    found, queue = [], [model]
    while queue:
        for child in getattr(queue.pop(), "_layers", None) or ():
            found.append(child)
            queue.append(child)
    return found


def images(batch: int, size: int, seed: int = 0) -> np.ndarray:
    """RGB images with pixel values in [0, 255), as ``keras.applications`` expect."""
    return np.random.default_rng(seed).uniform(0, 255, (batch, size, size, 3)).astype(
        np.float32)


def normal(batch: int, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, *shape)).astype(np.float32)


# --- The architectures ----------------------------------------------------------------------


EFFICIENTNET_SIZE = 64


def _application(build: Callable[..., Any], seed: int, **options: Any) -> Any:
    """A keras.applications model at 64×64, 10 classes, logits (a stricter comparison than
    softmax), BatchNormalization statistics drawn away from the defaults."""
    keras.utils.set_random_seed(seed)
    model = build(weights=None, input_shape=(EFFICIENTNET_SIZE, EFFICIENTNET_SIZE, 3),
                  classes=10, classifier_activation=None, **options)
    randomize_batchnorm(model, images(16, EFFICIENTNET_SIZE, seed=1), seed=seed, spread=0.0)
    return model


def efficientnet_b0() -> Any:
    """EfficientNetB0 (built-in preprocessing; 9 stochastic-depth sites and the top dropout)."""
    return _application(keras.applications.EfficientNetB0, 11)


def efficientnet_v2_b0() -> Any:
    """EfficientNetV2B0 (Fused-MBConv blocks; 15 stochastic-depth sites and the top dropout)."""
    return _application(keras.applications.EfficientNetV2B0, 12)


def mobilenet_v3_small() -> Any:
    """MobileNetV3Small (hard-swish, squeeze-excite, Rescaling; one dropout)."""
    return _application(keras.applications.MobileNetV3Small, 13, include_preprocessing=True)


TCN_STEPS, TCN_FEATURES, TCN_FILTERS, TCN_RATE = 64, 4, 16, 0.1
TCN_DILATIONS = (1, 2, 4, 8, 16, 32, 64)


def tcn(dilations: tuple[int, ...] = TCN_DILATIONS) -> Any:
    """A TCN: per dilation a residual block of two causal convs, each followed by dropout."""
    keras.utils.set_random_seed(12)
    layers = keras.layers
    inputs = keras.Input((TCN_STEPS, TCN_FEATURES), name="sequence")
    x, skips = inputs, []
    for block, d in enumerate(dilations):
        name = f"b{block}"  # block i has dilation dilations[i]
        y = layers.Conv1D(TCN_FILTERS, 3, padding="causal", dilation_rate=d,
                          name=f"{name}_conv1")(x)
        y = layers.BatchNormalization(name=f"{name}_bn1")(y)
        y = layers.Activation("relu", name=f"{name}_relu1")(y)
        y = layers.SpatialDropout1D(TCN_RATE, name=f"{name}_sdrop1")(y)
        y = layers.Conv1D(TCN_FILTERS, 3, padding="causal", dilation_rate=d,
                          name=f"{name}_conv2")(y)
        y = layers.BatchNormalization(name=f"{name}_bn2")(y)
        y = layers.Activation("relu", name=f"{name}_relu2")(y)
        y = layers.SpatialDropout1D(TCN_RATE, name=f"{name}_sdrop2")(y)
        residual = x if x.shape[-1] == TCN_FILTERS else layers.Conv1D(
            TCN_FILTERS, 1, name=f"{name}_match")(x)
        x = layers.Add(name=f"{name}_residual")([residual, y])
        skips.append(y)
    s = layers.Activation("relu", name="skips_relu")(layers.Add(name="skips")(skips))
    s = layers.GlobalAveragePooling1D(name="pool")(s)
    model = keras.Model(inputs, layers.Dense(3, name="head")(s), name="tcn")
    randomize_batchnorm(model, normal(8, (TCN_STEPS, TCN_FEATURES), seed=2), seed=12)
    return model


CONVNEXT_SIZE = 32
CONVNEXT_DROP_PATH = 0.3


def convnext_mini() -> Any:
    """``keras.applications`` ConvNeXt with one block per stage and tiny widths.

    ``layer_scale_init_value=1`` keeps the residual branches (and so the
    stochastic depth) visible in the output; the stage-0 block has drop rate 0.
    """
    from keras.src.applications.convnext import ConvNeXt

    keras.utils.set_random_seed(13)
    return ConvNeXt(depths=[1, 1, 1, 1], projection_dims=[8, 16, 24, 32],
                    drop_path_rate=CONVNEXT_DROP_PATH, layer_scale_init_value=1.0,
                    weights=None, input_shape=(CONVNEXT_SIZE, CONVNEXT_SIZE, 3), classes=5,
                    classifier_activation=None, name="convnext_mini")


RNN_STEPS, RNN_FEATURES, RNN_UNITS = 10, 4, 8
#: (dropout, recurrent_dropout) of the LSTM and the GRU; the head's two dropout layers' rate.
LSTM_RATES, GRU_RATES, TWIN_RATE = (0.2, 0.3), (0.25, 0.2), 0.3


def bidirectional_rnn() -> Any:
    """BiLSTM → BiGRU, then two Dropout(0.3) on the same tensor (tf2onnx merges their nodes)."""
    keras.utils.set_random_seed(14)
    layers = keras.layers
    inputs = keras.Input((RNN_STEPS, RNN_FEATURES), name="sequence")
    x = layers.Bidirectional(layers.LSTM(RNN_UNITS, dropout=LSTM_RATES[0],
                                         recurrent_dropout=LSTM_RATES[1],
                                         return_sequences=True), name="bilstm")(inputs)
    x = layers.Bidirectional(layers.GRU(RNN_UNITS, dropout=GRU_RATES[0],
                                        recurrent_dropout=GRU_RATES[1]), name="bigru")(x)
    a = layers.Dropout(TWIN_RATE, name="twin_a")(x)
    b = layers.Dropout(TWIN_RATE, name="twin_b")(x)
    x = layers.Concatenate(name="twins")([a, b])
    return keras.Model(inputs, layers.Dense(3, name="head")(x), name="bidirectional_rnn")


CUSTOM_SIZE = 8


def custom_random() -> Any:
    """Augmentation, a user's DropPath (converts), multiplicative noise (cannot), a Dropout."""
    keras.utils.set_random_seed(15)
    layers = keras.layers
    inputs = keras.Input((CUSTOM_SIZE, CUSTOM_SIZE, 3), name="image")
    x = layers.RandomFlip("horizontal", name="flip")(inputs)
    x = layers.Conv2D(8, 3, padding="same", name="conv")(x)
    x = layers.BatchNormalization(name="bn")(x)
    x = layers.Add(name="residual")([x, DropPath(0.25, name="drop_path")(
        layers.Conv2D(8, 1, name="branch")(x))])
    x = MultiplicativeNoise(0.5, name="noise")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = layers.Dropout(0.2, name="head_dropout")(x)
    model = keras.Model(inputs, layers.Dense(4, name="head")(x), name="custom_random")
    randomize_batchnorm(model, normal(8, (CUSTOM_SIZE, CUSTOM_SIZE, 3), seed=3), seed=15)
    return model


def forced_training_changes_output() -> Any:
    """A user's DropPath (keeps) and NormThenDropPath (whose training mode changes its BN)."""
    keras.utils.set_random_seed(16)
    layers = keras.layers
    inputs = keras.Input((CUSTOM_SIZE, CUSTOM_SIZE, 3), name="image")
    x = layers.Conv2D(8, 3, padding="same", name="conv")(inputs)
    x = layers.Add(name="residual")([x, DropPath(0.2, name="drop_path")(x)])
    x = NormThenDropPath(0.3, name="norm_drop_path")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    model = keras.Model(inputs, layers.Dense(4, name="head")(x), name="forced_training")
    randomize_batchnorm(model, normal(8, (CUSTOM_SIZE, CUSTOM_SIZE, 3), seed=4), seed=16)
    return model


@dataclass(frozen=True)
class Architecture:
    """One architecture class: how to build it and feed it."""

    name: str
    build: Callable[[], Any]
    sample: Callable[[int, int], np.ndarray]
    """``sample(batch, seed)``: a valid input batch."""
    description: str


ARCHITECTURES = {
    a.name: a for a in (
        Architecture("efficientnet_b0", efficientnet_b0,
                     lambda n, seed: images(n, EFFICIENTNET_SIZE, seed),
                     "keras.applications EfficientNetB0 64x64, built-in preprocessing"),
        Architecture("efficientnet_v2_b0", efficientnet_v2_b0,
                     lambda n, seed: images(n, EFFICIENTNET_SIZE, seed),
                     "keras.applications EfficientNetV2B0 64x64 (Fused-MBConv)"),
        Architecture("mobilenet_v3_small", mobilenet_v3_small,
                     lambda n, seed: images(n, EFFICIENTNET_SIZE, seed),
                     "keras.applications MobileNetV3Small 64x64 (hard-swish, SE)"),
        Architecture("tcn", tcn, lambda n, seed: normal(n, (TCN_STEPS, TCN_FEATURES), seed),
                     "TCN, dilations 1..64, 2 SpatialDropout1D per block, skips"),
        Architecture("convnext_mini", convnext_mini,
                     lambda n, seed: images(n, CONVNEXT_SIZE, seed),
                     "keras.applications ConvNeXt (depthwise conv, exact GELU, "
                     "StochasticDepth), tiny"),
        Architecture("bidirectional_rnn", bidirectional_rnn,
                     lambda n, seed: normal(n, (RNN_STEPS, RNN_FEATURES), seed),
                     "Bidirectional LSTM + GRU with dropout/recurrent_dropout, "
                     "two Dropouts on one tensor"),
        Architecture("custom_random", custom_random,
                     lambda n, seed: normal(n, (CUSTOM_SIZE, CUSTOM_SIZE, 3), seed),
                     "user DropPath, unclassifiable multiplicative noise, RandomFlip"),
        Architecture("forced_training_changes_output", forced_training_changes_output,
                     lambda n, seed: normal(n, (CUSTOM_SIZE, CUSTOM_SIZE, 3), seed),
                     "user layer whose training mode also switches its BatchNormalization"),
    )
}


def framework_draws(model: Any, sample: np.ndarray) -> int:
    """Random draws of one Keras training-mode call: the dropout sites of the framework model.

    Counted on TensorFlow's own trace of ``model(x, training=True)`` (top-level
    draw ops; Keras draws RNN masks before the loop), independently of the
    converter. Augmentation layers count too.
    """
    import tensorflow as tf

    spec = tf.TensorSpec((None, *sample.shape[1:]), tf.float32)
    concrete = tf.function(lambda x: model(x, training=True)).get_concrete_function(spec)
    return sum(op.type in DRAW_OPS for op in concrete.graph.get_operations())
