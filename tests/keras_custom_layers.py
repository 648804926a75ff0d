"""A registered custom Keras layer that holds dropout *inside* it, like keras-tcn's ``TCN``.

Loaded by the converter tests with ``--import keras_custom_layers`` (the tests
folder is on ``sys.path`` under pytest). Each ``ResidualStack`` holds a list of
residual blocks; every block owns a Conv1D and a SpatialDropout1D, so the
dropout layers sit two levels below the model.
"""

from __future__ import annotations

from typing import Any

import keras

PACKAGE = "spatialdrop_tests"


@keras.saving.register_keras_serializable(package=PACKAGE)
class ResidualBlock(keras.layers.Layer):
    """``x + SpatialDropout1D(Conv1D(x))`` with causal padding (shape-preserving)."""

    def __init__(self, channels: int, rate: float, dilation: int = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.channels, self.rate, self.dilation = channels, rate, dilation
        self.conv = keras.layers.Conv1D(channels, 3, padding="causal", dilation_rate=dilation,
                                        name="conv")
        self.dropout = keras.layers.SpatialDropout1D(rate, name="spatial_dropout")

    def build(self, input_shape: tuple) -> None:
        self.conv.build(input_shape)

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        return inputs + self.dropout(self.conv(inputs), training=training)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "channels": self.channels, "rate": self.rate,
                "dilation": self.dilation}


@keras.saving.register_keras_serializable(package=PACKAGE)
class ResidualStack(keras.layers.Layer):
    """Several ``ResidualBlock``s with growing dilation, kept in a Python list."""

    def __init__(self, channels: int, rate: float, blocks: int = 2, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.channels, self.rate, self.blocks = channels, rate, blocks
        self.residual_blocks = [ResidualBlock(channels, rate, dilation=2**i,
                                              name=f"residual_block_{i}")
                                for i in range(blocks)]

    def build(self, input_shape: tuple) -> None:
        for block in self.residual_blocks:
            block.build(input_shape)

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        x = inputs
        for block in self.residual_blocks:
            x = block(x, training=training)
        return x

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "channels": self.channels, "rate": self.rate,
                "blocks": self.blocks}


@keras.saving.register_keras_serializable(package=PACKAGE)
class InverseErf(keras.layers.Layer):
    """Applies ``erfinv``: tf2onnx has no conversion for TensorFlow's ``Erfinv`` op."""

    def call(self, inputs: Any) -> Any:
        return keras.ops.erfinv(keras.ops.tanh(inputs) * 0.5)


@keras.saving.register_keras_serializable(package=PACKAGE)
class MonteCarloDropout(keras.layers.Dropout):
    """The usual Monte-Carlo-dropout recipe: a Dropout that is random at inference too."""

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        return super().call(inputs, training=True)


@keras.saving.register_keras_serializable(package=PACKAGE)
class BatchDropPath(keras.layers.Layer):
    """A drop path whose training call fails in Keras itself inside a traced function.

    It builds its noise shape from ``inputs.shape[0]``, which is ``None`` when the
    batch size is dynamic, so ``keras.random.uniform`` cannot take it.
    """

    def __init__(self, rate: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rate = rate
        self.seed_generator = keras.random.SeedGenerator(11)

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        if not training:
            return inputs
        shape = (inputs.shape[0],) + (1,) * (len(inputs.shape) - 1)
        noise = keras.random.uniform(shape, seed=self.seed_generator)
        return inputs / (1 - self.rate) * keras.ops.floor(1 - self.rate + noise)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "rate": self.rate}


@keras.saving.register_keras_serializable(package=PACKAGE)
class DropPathBlock(keras.layers.Layer):
    """``x + BatchDropPath(Dense(x))``: a container around the failing layer."""

    def __init__(self, units: int, rate: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.units, self.rate = units, rate
        self.dense = keras.layers.Dense(units, name="dense")
        self.drop_path = BatchDropPath(rate, name="drop_path")

    def build(self, input_shape: tuple) -> None:
        self.dense.build(input_shape)

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        return inputs + self.drop_path(self.dense(inputs), training=training)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "units": self.units, "rate": self.rate}


@keras.saving.register_keras_serializable(package=PACKAGE)
class SubclassedClassifier(keras.Model):
    """A subclassed model (no functional graph): Dense → Dropout → Dense, on one tensor or
    on a dict ``{"numbers", "extra"}`` (concatenated)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.hidden = keras.layers.Dense(8, activation="relu", name="hidden")
        self.dropout = keras.layers.Dropout(0.4, name="dropout")
        self.out = keras.layers.Dense(3, name="out")

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        features = inputs
        if isinstance(inputs, dict):
            features = keras.ops.concatenate([inputs["numbers"], inputs["extra"]], axis=-1)
        return self.out(self.dropout(self.hidden(features), training=training))
