"""Build, train and save the seed model: ``models/seed_model.keras``.

The seed model is a tiny GRU encoder-decoder that learns to *reverse* a
sequence of tokens::

    Embedding → SpatialDropout1D(0.2) → GRU(32, dropout=0.2, recurrent_dropout=0.2)
    → RepeatVector → GRU(32, return_sequences=True) → TimeDistributed(Dense) → softmax

It carries the three kinds of Keras dropout the converter must keep: a
channel-wise SpatialDropout1D and a GRU's input and recurrent dropout masks.
Training is short (about a minute on two cores) and seeded, so the committed
file is reproducible in spirit; it is committed so that users and tests do not
need to train anything.

Run: ``.venv/bin/python models/build_seed_model.py [--out PATH] [--epochs N]``
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # keep TensorFlow's C++ chatter out

import numpy as np  # noqa: E402

#: Token ids 0..VOCAB-1; sequences of SEQ_LEN tokens.
VOCAB = 10
SEQ_LEN = 6
EMBED = 16
UNITS = 32
SEED = 1234
DEFAULT_OUT = Path(__file__).with_name("seed_model.keras")


def toy_reversal_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random token sequences and their reversals (int32, [n, SEQ_LEN])."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, VOCAB, size=(n, SEQ_LEN), dtype=np.int32)
    return x, x[:, ::-1].copy()


def build_model():  # noqa: ANN201 - returns a keras.Model; keras is imported lazily
    """The untrained seed model (functional API, int32 ``tokens`` input, dynamic batch)."""
    import keras

    tokens = keras.Input(shape=(SEQ_LEN,), dtype="int32", name="tokens")
    x = keras.layers.Embedding(VOCAB, EMBED, name="embedding")(tokens)
    x = keras.layers.SpatialDropout1D(0.2, seed=SEED, name="spatial_dropout")(x)
    x = keras.layers.GRU(UNITS, dropout=0.2, recurrent_dropout=0.2, seed=SEED,
                         name="encoder")(x)
    x = keras.layers.RepeatVector(SEQ_LEN, name="repeat")(x)
    x = keras.layers.GRU(UNITS, return_sequences=True, name="decoder")(x)
    x = keras.layers.TimeDistributed(keras.layers.Dense(VOCAB), name="logits")(x)
    probs = keras.layers.Activation("softmax", name="probs")(x)
    return keras.Model(tokens, probs, name="seed_reverser")


def main(argv: list[str] | None = None) -> int:
    """Train the seed model on the reversal task and save it atomically."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--epochs", type=int, default=100)
    args = parser.parse_args(argv)

    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(SEED)
    tf.config.experimental.enable_op_determinism()
    model = build_model()
    model.compile(optimizer=keras.optimizers.Adam(3e-3),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    x_train, y_train = toy_reversal_data(8000, seed=SEED)
    x_test, y_test = toy_reversal_data(1000, seed=SEED + 1)
    model.fit(x_train, y_train, batch_size=128, epochs=args.epochs, verbose=2,
              validation_data=(x_test, y_test))
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)
    print(f"token accuracy on held-out sequences: {accuracy:.3f}")

    # Ship the weights without the optimizer state (a third of the file) and
    # uncompiled: users load it for inference and conversion.
    shipped = build_model()
    shipped.set_weights(model.get_weights())
    # Save next to the destination, then rename: never a half-written model.
    tmp = args.out.with_name(f".{args.out.stem}.tmp.keras")
    shipped.save(tmp)
    os.replace(tmp, args.out)
    print(f"saved {args.out} ({args.out.stat().st_size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
