"""What a Keras GRU/LSTM layer is, in the terms of the ONNX ``GRU``/``LSTM`` op.

:func:`rnn_specs` reads every ``GRU``, ``LSTM`` and ``Bidirectional(GRU/LSTM)`` of a
model (its configuration and weights) into an :class:`RnnSpec`, or says why the
layer has no ONNX equivalent (an activation the op has not, a stateful layer…).
:meth:`RnnSpec.weights` lays the Keras weights out as the op's ``W``, ``R``, ``B``:

* Keras ``kernel`` is ``[input, gates·units]``, ``recurrent_kernel``
  ``[units, gates·units]``; ONNX ``W`` is ``[directions, gates·units, input]`` and
  ``R`` ``[directions, gates·units, units]`` — the transposes, stacked;
* gate order: GRU z, r, h in both; LSTM i, f, c, o in Keras, i, o, f, c in ONNX;
* ``B`` is ``[directions, 2·gates·units]``, the input bias then the recurrent one.
  A GRU with ``reset_after=True`` (Keras' default, ``linear_before_reset=1`` in
  ONNX) has both (its bias is ``[2, 3·units]``); otherwise, and for the LSTM, Keras
  has one bias, the input bias, and the recurrent half is zero.

The graph side (finding the layer's ``Loop``, checking and replacing it) is
:mod:`.keras_rnn`.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from .keras_layers import iter_sublayers

#: Keras activation name -> ONNX RNN activation name (only those without alpha/beta: the
#: op's ``activation_alpha`` list is consumed across activations, which runtimes read alike
#: only when no activation takes one).
ACTIVATIONS = {"tanh": "Tanh", "sigmoid": "Sigmoid", "relu": "Relu"}


@dataclass(frozen=True)
class Direction:
    """One direction of an RNN: its Keras weights (float32) and whether it runs backwards."""

    kernel: np.ndarray
    recurrent_kernel: np.ndarray
    bias: np.ndarray | None
    backwards: bool


@dataclass(frozen=True)
class RnnSpec:
    """A Keras GRU/LSTM (or a Bidirectional of one) the ONNX op can compute."""

    path: str
    layer_class: str
    """``GRU``, ``LSTM`` or ``Bidirectional(GRU)``…"""
    op_type: str
    """``GRU`` or ``LSTM``."""
    units: int
    activation: str
    """ONNX name of the cell's activation (GRU h, LSTM g and h)."""
    recurrent_activation: str
    """ONNX name of the gates' activation (GRU z and r, LSTM i, f, o)."""
    reset_after: bool
    directions: tuple[Direction, ...]
    bidirectional: bool
    merge_mode: str | None
    """Bidirectional only: ``concat``, ``sum``, ``mul``, ``ave`` or None (two outputs)."""
    return_sequences: bool
    dropout: float
    recurrent_dropout: float
    implementation: int
    time_steps: int | None
    features: int

    @property
    def gates(self) -> int:
        return 3 if self.op_type == "GRU" else 4

    def activations(self) -> list[str]:
        """The op's ``activations`` attribute for one direction."""
        if self.op_type == "GRU":
            return [self.recurrent_activation, self.activation]
        return [self.recurrent_activation, self.activation, self.activation]

    def weights(self, directions: tuple[Direction, ...]) -> tuple[np.ndarray, np.ndarray,
                                                                   np.ndarray | None]:
        """``W``, ``R`` and ``B`` (None without bias) of an op computing ``directions``."""
        order = self._gate_order
        w = np.stack([order(d.kernel).T for d in directions])
        r = np.stack([order(d.recurrent_kernel).T for d in directions])
        if directions[0].bias is None:
            return w, r, None
        return w, r, np.stack([self._bias(d.bias) for d in directions])

    def _gate_order(self, matrix: np.ndarray) -> np.ndarray:
        """Columns (last axis) in the op's gate order."""
        if self.op_type == "GRU":
            return matrix
        i, f, c, o = np.split(matrix, 4, axis=-1)
        return np.concatenate([i, o, f, c], axis=-1)

    def _bias(self, bias: np.ndarray) -> np.ndarray:
        if self.op_type == "GRU" and self.reset_after:  # [2, 3u]: input, recurrent
            return np.concatenate([bias[0], bias[1]])
        return np.concatenate([self._gate_order(bias), np.zeros_like(bias)])

    def describe(self) -> str:
        """The op as the report shows it, e.g. ``GRU(bidirectional, linear_before_reset=1)``."""
        if self.bidirectional:
            direction = "bidirectional"
        else:
            direction = "reverse" if self.directions[0].backwards else "forward"
        extra = ", linear_before_reset=1" if self.op_type == "GRU" and self.reset_after else ""
        return f"{self.op_type}({direction}{extra})"


def _numpy(keras: ModuleType, variable: Any) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(variable))


def _activation_name(keras: ModuleType, function: Any) -> str | None:
    name = keras.activations.serialize(function)
    return ACTIVATIONS.get(name) if isinstance(name, str) else None


def _direction(keras: ModuleType, layer: Any) -> Direction:
    cell = layer.cell
    bias = _numpy(keras, cell.bias) if cell.use_bias else None
    return Direction(_numpy(keras, cell.kernel), _numpy(keras, cell.recurrent_kernel), bias,
                     bool(layer.go_backwards))


def _why_not(keras: ModuleType, layer: Any) -> str | None:
    """Why an RNN layer (not a wrapper) has no ONNX op equivalent; None if it has one."""
    cell = layer.cell
    for label, function in (("activation", cell.activation),
                            ("recurrent_activation", cell.recurrent_activation)):
        if _activation_name(keras, function) is None:
            return (f"its {label} {keras.activations.serialize(function)!r} is not one of "
                    f"{', '.join(ACTIVATIONS)}")
    if layer.stateful:
        return "it is stateful (its state outlives a call)"
    if str(cell.kernel.dtype) != "float32":
        return f"its weights are {cell.kernel.dtype}, not float32"
    return None


def _spec(path: str, layer: Any, keras: ModuleType) -> RnnSpec | str:
    """The spec of a GRU/LSTM or Bidirectional(GRU/LSTM), or why it has none."""
    bidirectional = isinstance(layer, keras.layers.Bidirectional)
    parts = [layer.forward_layer, layer.backward_layer] if bidirectional else [layer]
    kinds = {type(p).__name__ for p in parts}
    if not all(isinstance(p, (keras.layers.GRU, keras.layers.LSTM)) for p in parts):
        return f"it wraps {', '.join(sorted(kinds))}, not a GRU or LSTM"
    if len(kinds) > 1:
        return f"its directions are different layers ({', '.join(sorted(kinds))})"
    for part in parts:
        reason = _why_not(keras, part)
        if reason is not None:
            return reason
    first, cells = parts[0], [p.cell for p in parts]
    op_type = "GRU" if isinstance(first, keras.layers.GRU) else "LSTM"
    config = [(c.units, c.use_bias, getattr(c, "reset_after", False),
               keras.activations.serialize(c.activation),
               keras.activations.serialize(c.recurrent_activation)) for c in cells]
    if len(set(config)) > 1:
        return "its two directions are configured differently"
    try:
        shape = tuple(layer.input.shape)
    except (AttributeError, ValueError):
        return "its input shape is unknown (the layer was not called on a Keras input)"
    if len(shape) != 3 or shape[-1] is None:
        return f"its input has shape {shape}, not (batch, time, features)"
    cell = first.cell
    label = f"Bidirectional({type(first).__name__})" if bidirectional else type(layer).__name__
    return RnnSpec(
        path=path, layer_class=label, op_type=op_type, units=int(cell.units),
        activation=ACTIVATIONS[keras.activations.serialize(cell.activation)],
        recurrent_activation=ACTIVATIONS[keras.activations.serialize(cell.recurrent_activation)],
        reset_after=bool(getattr(cell, "reset_after", False)),
        directions=tuple(_direction(keras, p) for p in parts), bidirectional=bidirectional,
        merge_mode=layer.merge_mode if bidirectional else None,
        return_sequences=bool(first.return_sequences),
        dropout=max(float(c.dropout) for c in cells),
        recurrent_dropout=max(float(c.recurrent_dropout) for c in cells),
        implementation=max(int(getattr(c, "implementation", 2)) for c in cells),
        time_steps=shape[1], features=int(shape[2]))


def rnn_specs(model: Any, keras: ModuleType) -> list[tuple[str, str, RnnSpec | str]]:
    """Every GRU/LSTM of ``model`` (Bidirectional ones once, as the wrapper):
    ``(path, class name, spec or why there is none)``."""
    found: list[tuple[str, str, RnnSpec | str]] = []
    wrappers: list[str] = []
    rnn_classes = (keras.layers.GRU, keras.layers.LSTM)
    for path, layer in iter_sublayers(model):
        if any(path.startswith(f"{wrapper}/") for wrapper in wrappers):
            continue  # a Bidirectional's direction: handled with the wrapper
        wrapped = isinstance(layer, keras.layers.Bidirectional)
        if wrapped:
            wrappers.append(path)
            if not isinstance(layer.forward_layer, rnn_classes):
                continue  # a Bidirectional of another RNN: not ours to fuse
        elif not isinstance(layer, rnn_classes):
            continue
        spec = _spec(path, layer, keras)
        label = spec.layer_class if isinstance(spec, RnnSpec) else type(layer).__name__
        found.append((path, label, spec))
    return found
