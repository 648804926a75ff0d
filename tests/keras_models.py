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


def mobilenet_head_model(keras: Any) -> Any:
    """MobileNet v1's head: ``GlobalAveragePooling2D(keepdims=True)`` → Dropout → 1×1 Conv2D.

    tf2onnx writes the NHWC → NCHW change of the pooled (N, 1, 1, C) tensor as a
    ``Reshape`` between the dropout's scaled value and its mask. Outputs: the dropout's
    output (so its mask can be checked) and the logits.
    """
    keras.utils.set_random_seed(4)
    layers = keras.layers
    image = keras.Input((8, 8, 3), name="image")
    x = layers.Conv2D(6, 3, padding="same", name="conv")(image)  # no ReLU: no pooled 0
    pooled = layers.GlobalAveragePooling2D(keepdims=True, name="pool")(x)
    dropped = layers.Dropout(0.3, name="head_dropout")(pooled)
    x = layers.Conv2D(4, 1, name="logits")(dropped)
    return keras.Model(image, [dropped, layers.Reshape((4,), name="flat")(x)],
                       name="mobilenet_head")


def attention_model(keras: Any) -> Any:
    """A transformer block's attention as Keras writes BERT and ViT: ``MultiHeadAttention``
    with ``dropout`` (its own ``Dropout`` on the attention probabilities), a residual, a
    ``LayerNormalization`` and a per-token head."""
    keras.utils.set_random_seed(8)
    layers = keras.layers
    tokens = keras.Input((5, 8), name="tokens")
    attended = layers.MultiHeadAttention(num_heads=2, key_dim=4, dropout=0.3,
                                         name="mha")(tokens, tokens)
    x = layers.LayerNormalization(name="norm")(layers.Add(name="residual")([tokens, attended]))
    return keras.Model(tokens, layers.Dense(3, name="scores")(x), name="attention_block")


def subclassed_model(keras: Any, dict_inputs: bool) -> Any:
    """A subclassed ``keras.Model`` built by calling it on ``keras.Input`` (one or a dict)."""
    import keras_custom_layers as custom

    keras.utils.set_random_seed(6)
    model = custom.SubclassedClassifier(name="subclassed")
    if dict_inputs:
        model({"numbers": keras.Input((5,), name="numbers"),
               "extra": keras.Input((2,), name="extra")})
    else:
        model(keras.Input((7,), name="features"))
    return model


def monte_carlo_model(keras: Any) -> Any:
    """Dense → MonteCarloDropout (random at inference too) → Dense: Keras predict is random."""
    import keras_custom_layers as custom

    keras.utils.set_random_seed(8)
    x = keras.Input((6,), name="x")
    h = keras.layers.Dense(16, activation="relu", name="hidden")(x)
    h = custom.MonteCarloDropout(0.5, name="mc_dropout")(h)
    return keras.Model(x, keras.layers.Dense(3, name="out")(h), name="monte_carlo")


def failing_drop_path_model(keras: Any) -> Any:
    """A DropPathBlock whose BatchDropPath cannot be traced in training mode."""
    import keras_custom_layers as custom

    keras.utils.set_random_seed(9)
    x = keras.Input((6,), name="x")
    h = custom.DropPathBlock(6, 0.2, name="block")(x)
    h = keras.layers.Dropout(0.1, name="dropout")(h)
    return keras.Model(x, keras.layers.Dense(2, name="out")(h), name="drop_path")


def _initializer(name: str, **config: Any) -> dict[str, Any]:
    return {"class_name": name, "config": config}


def _keras2_layer(class_name: str, name: str, inbound: str | None, **config: Any
                  ) -> dict[str, Any]:
    """One layer entry of a functional model's config as Keras 2 (tf-keras 2.12) wrote it."""
    return {"class_name": class_name,
            "config": {"name": name, "trainable": True, "dtype": "float32", **config},
            "name": name, "inbound_nodes": [] if inbound is None else [[[inbound, 0, 0, {}]]]}


#: What tf-keras writes for ``Dense(4)`` / ``GRU`` settings it has and Keras 3 does not.
_KERAS2_DENSE = {"units": 4, "activation": "linear", "use_bias": True,
                 "kernel_initializer": _initializer("GlorotUniform", seed=None),
                 "bias_initializer": _initializer("Zeros"), "kernel_regularizer": None,
                 "bias_regularizer": None, "activity_regularizer": None,
                 "kernel_constraint": None, "bias_constraint": None}


def keras2_seed_like_config() -> dict[str, Any]:
    """A seed-era model's config exactly as Keras 2 writes it into an ``.h5`` file.

    Keras 2 gives every layer ``trainable`` and a string ``dtype``, the input layer
    ``batch_input_shape``, SpatialDropout the ``noise_shape`` of its Dropout base, RNNs
    ``time_major`` and ``implementation``, Embedding ``input_length``, and writes nested
    layers (inside TimeDistributed) and initializers without ``module`` (before 2.13).
    """
    layers = [
        {"class_name": "InputLayer", "name": "tokens", "inbound_nodes": [],
         "config": {"batch_input_shape": [None, 6], "dtype": "int32", "sparse": False,
                    "ragged": False, "name": "tokens"}},
        _keras2_layer("Embedding", "embedding", "tokens", batch_input_shape=[None, 6],
                      input_dim=10, output_dim=8,
                      embeddings_initializer=_initializer("RandomUniform", minval=-0.05,
                                                          maxval=0.05, seed=None),
                      embeddings_regularizer=None, activity_regularizer=None,
                      embeddings_constraint=None, mask_zero=False, input_length=6),
        _keras2_layer("SpatialDropout1D", "spatial_dropout", "embedding", rate=0.2,
                      noise_shape=None, seed=None),
        _keras2_layer("GRU", "encoder", "spatial_dropout", return_sequences=True,
                      return_state=False, go_backwards=False, stateful=False, unroll=False,
                      time_major=False, units=8, activation="tanh",
                      recurrent_activation="sigmoid", use_bias=True,
                      kernel_initializer=_initializer("GlorotUniform", seed=None),
                      recurrent_initializer=_initializer("Orthogonal", gain=1.0, seed=None),
                      bias_initializer=_initializer("Zeros"), kernel_regularizer=None,
                      recurrent_regularizer=None, bias_regularizer=None,
                      activity_regularizer=None, kernel_constraint=None,
                      recurrent_constraint=None, bias_constraint=None, dropout=0.2,
                      recurrent_dropout=0.2, implementation=2, reset_after=True),
        _keras2_layer("Dropout", "word_drop", "encoder", rate=0.3, noise_shape=[None, 1, 8],
                      seed=None),
        _keras2_layer("TimeDistributed", "logits", "word_drop", layer={
            "class_name": "Dense",
            "config": {"name": "dense", "trainable": True, "dtype": "float32",
                       **_KERAS2_DENSE}}),
    ]
    return {"class_name": "Functional",
            "config": {"name": "seed_like", "trainable": True, "layers": layers,
                       "input_layers": [["tokens", 0, 0]], "output_layers": [["logits", 0, 0]]}}


def keras3_seed_like_model(keras: Any) -> Any:
    """The same model in Keras 3: it gives the weights the Keras 2 file holds."""
    keras.utils.set_random_seed(10)
    layers = keras.layers
    tokens = keras.Input((6,), dtype="int32", name="tokens")
    x = layers.Embedding(10, 8, name="embedding")(tokens)
    x = layers.SpatialDropout1D(0.2, name="spatial_dropout")(x)
    x = layers.GRU(8, dropout=0.2, recurrent_dropout=0.2, return_sequences=True,
                   name="encoder")(x)
    x = layers.Dropout(0.3, noise_shape=(None, 1, 8), name="word_drop")(x)
    logits = layers.TimeDistributed(layers.Dense(4, name="dense"), name="logits")(x)
    return keras.Model(tokens, logits, name="seed_like")


def write_keras2_h5(keras: Any, path: Path) -> Any:
    """A Keras 2 ``.h5`` of the seed-like model; returns the Keras 3 twin (same weights).

    The weights are written by Keras 3's legacy HDF5 writer (the layout Keras 2 reads
    and writes: ``model_weights/<layer>/…`` in ``layer_names``/``weight_names`` order);
    the config and ``keras_version`` are replaced by what Keras 2 writes.
    """
    import json

    import h5py

    twin = keras3_seed_like_model(keras)
    twin.save(path)
    with h5py.File(path, "r+") as handle:
        handle.attrs["model_config"] = json.dumps(keras2_seed_like_config())
        handle.attrs["keras_version"] = "2.12.0"
    return twin


def encode_keras_metadata(layers: list[dict[str, Any]]) -> bytes:
    """``keras_metadata.pb`` as tf-keras writes it into a SavedModel, for these layer entries.

    Protobuf wire format of ``SavedMetadata { repeated SavedObject nodes = 1; }`` with
    ``SavedObject { int32 node_id = 2; string node_path = 3; string identifier = 4;
    string metadata = 5; }``, encoded by hand (tf-keras' module is not installed).
    """
    import json

    def varint(value: int) -> bytes:
        out = bytearray()
        while True:
            low, value = value & 0x7F, value >> 7
            out.append(low | (0x80 if value else 0))
            if not value:
                return bytes(out)

    def text(number: int, value: str) -> bytes:
        data = value.encode()
        return varint(number << 3 | 2) + varint(len(data)) + data

    encoded = b""
    for index, entry in enumerate(layers, start=1):
        node = (varint(2 << 3) + varint(index) + text(3, f"root.layer-{index}")
                + text(4, "_tf_keras_layer") + text(5, json.dumps(entry)))
        encoded += varint(1 << 3 | 2) + varint(len(node)) + node
    return encoded
