"""Which layers of a Keras model draw random numbers, and what kind of randomness each is.

Three ways a layer is found:

* **by class**: the dropout family (``Dropout`` and its subclasses,
  ``GaussianDropout``, ``GaussianNoise``, ``AlphaDropout``) and RNN layers whose
  cell has ``dropout``/``recurrent_dropout`` (:func:`classify_layer`);
* **augmentation**: Keras' own preprocessing layers that hold a
  ``keras.random.SeedGenerator`` (``RandomFlip``, ``RandomZoom``, ``MixUp``, …):
  Keras applies them only when training, so the ONNX model has them as the
  identity, which the report notes;
* **by probing**: any other layer whose class is defined outside Keras' layer
  packages (``keras.applications`` ConvNeXt's ``StochasticDepth``, a user's
  custom layer), or that holds a ``SeedGenerator`` Keras' own classes do not
  explain, is a *probe candidate*: :mod:`.keras_probe` traces the model in
  training mode and looks for random TensorFlow ops in its name scope.

Layers nested inside a layer found by class (an RNN's cell) belong to it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from types import ModuleType
from typing import Any

#: Modules of Keras' own layer and container classes: their behaviour is known.
KERAS_LAYER_MODULES = ("keras.src.layers.", "keras.src.models.")
#: Keras' preprocessing (augmentation) layers live under this module.
KERAS_PREPROCESSING = "keras.src.layers.preprocessing."


class LayerKind(StrEnum):
    """How a layer is random in training mode."""

    SPATIAL = "spatial_dropout"            # SpatialDropout1D/2D/3D
    NOISE_SHAPE = "dropout_noise_shape"    # Dropout(noise_shape=...)
    DROPOUT = "dropout"                    # plain element-wise Dropout
    GAUSSIAN_DROPOUT = "gaussian_dropout"  # multiplicative N(1, rate/(1-rate)) noise
    GAUSSIAN_NOISE = "gaussian_noise"      # additive N(0, stddev) noise
    ALPHA_DROPOUT = "alpha_dropout"        # SELU-preserving dropout
    RNN = "rnn_dropout"                    # GRU/LSTM/SimpleRNN/ConvLSTM dropout masks
    RANDOM = "random_layer"                # another layer the probe saw drawing random numbers
    AUGMENTATION = "augmentation"          # Keras preprocessing layer (training only)


@dataclass
class RandomLayer:
    """One layer that draws random numbers in training mode (possibly nested in another)."""

    path: str
    """Layer path from the model, e.g. ``tcn/residual_block_0/spatial_dropout``."""
    layer_class: str
    kind: LayerKind
    rate: float | None
    """Dropout rate (GaussianNoise: the stddev; RNNs: the input dropout); None if unknown."""
    details: dict[str, Any] = field(default_factory=dict)
    """Kind-specific facts: ``shared_axes`` (Keras layout), ``data_format``,
    ``noise_shape``, ``recurrent_dropout``; for probed layers ``random_ops``."""
    layer: Any = field(default=None, repr=False, compare=False)
    inference_only: str = ""
    """Why the layer is exported for inference only before any trace (e.g. its
    training-mode call fails in Keras itself); empty when it is converted."""

    @property
    def active(self) -> bool:
        """Whether the layer draws random numbers in training mode at all."""
        if self.kind in (LayerKind.RANDOM, LayerKind.AUGMENTATION):
            return True
        return (self.rate or 0.0) > 0 or self.details.get("recurrent_dropout", 0) > 0

    @property
    def kept_in_training(self) -> bool:
        """Whether the converter traces this layer in training mode (augmentation never)."""
        return self.active and self.kind is not LayerKind.AUGMENTATION and \
            not self.inference_only


def iter_sublayers(model: Any) -> Iterator[tuple[str, Any]]:
    """Every layer inside ``model``, breadth first, as ``(path, layer)``; each layer once.

    Keras 3 tracks the sub-layers of any layer (functional, sequential or a
    custom layer holding layers in attributes or lists) in ``_layers``; there is
    no public recursive accessor. Breadth first gives each layer its shortest path.
    """
    seen = {id(model)}
    queue: list[tuple[str, Any]] = [("", model)]
    while queue:
        prefix, parent = queue.pop(0)
        for child in getattr(parent, "_layers", None) or ():
            if id(child) in seen:
                continue
            seen.add(id(child))
            path = f"{prefix}/{child.name}" if prefix else child.name
            yield path, child
            queue.append((path, child))


def _spatial_axes(layer: Any, rank: int) -> list[int]:
    """Shared axes of a SpatialDropoutND in the layer's own layout (batch axis 0)."""
    if getattr(layer, "data_format", "channels_last") == "channels_first":
        return list(range(2, rank))
    return list(range(1, rank - 1))


def classify_layer(layer: Any, keras: ModuleType) -> tuple[LayerKind, float, dict[str, Any]] | None:
    """``(kind, rate, details)`` for a dropout-family layer, None for any other layer."""
    layers = keras.layers
    spatial_ranks = {layers.SpatialDropout1D: 3, layers.SpatialDropout2D: 4,
                     layers.SpatialDropout3D: 5}
    for cls, rank in spatial_ranks.items():
        if isinstance(layer, cls):
            details: dict[str, Any] = {"shared_axes": _spatial_axes(layer, rank)}
            if hasattr(layer, "data_format"):
                details["data_format"] = layer.data_format
            return LayerKind.SPATIAL, float(layer.rate), details
    if isinstance(layer, layers.Dropout):
        if layer.noise_shape is not None:
            shape = [None if d is None else int(d) for d in layer.noise_shape]
            shared = [i for i, d in enumerate(shape) if d == 1]
            return (LayerKind.NOISE_SHAPE, float(layer.rate),
                    {"noise_shape": shape, "shared_axes": shared})
        return LayerKind.DROPOUT, float(layer.rate), {}
    if isinstance(layer, layers.GaussianDropout):
        return LayerKind.GAUSSIAN_DROPOUT, float(layer.rate), {}
    if isinstance(layer, layers.GaussianNoise):
        return LayerKind.GAUSSIAN_NOISE, float(layer.stddev), {}
    if isinstance(layer, layers.AlphaDropout):
        details = {}
        if layer.noise_shape is not None:
            details["noise_shape"] = [None if d is None else int(d) for d in layer.noise_shape]
        return LayerKind.ALPHA_DROPOUT, float(layer.rate), details
    if isinstance(layer, layers.RNN):
        cells = getattr(layer.cell, "cells", None) or [layer.cell]  # StackedRNNCells
        rates = [float(getattr(c, "dropout", 0.0) or 0.0) for c in cells]
        recurrent = [float(getattr(c, "recurrent_dropout", 0.0) or 0.0) for c in cells]
        if max(rates) > 0 or max(recurrent) > 0:
            return LayerKind.RNN, max(rates), {"recurrent_dropout": max(recurrent)}
    return None


#: Dropout-family classes by name, for layers known only by their saved config.
_CONFIG_KINDS = {"SpatialDropout1D": LayerKind.SPATIAL, "SpatialDropout2D": LayerKind.SPATIAL,
                 "SpatialDropout3D": LayerKind.SPATIAL, "Dropout": LayerKind.DROPOUT,
                 "GaussianDropout": LayerKind.GAUSSIAN_DROPOUT,
                 "GaussianNoise": LayerKind.GAUSSIAN_NOISE,
                 "AlphaDropout": LayerKind.ALPHA_DROPOUT}
_CONFIG_RNNS = ("SimpleRNN", "GRU", "LSTM", "ConvLSTM1D", "ConvLSTM2D", "ConvLSTM3D",
                "GRUV1", "LSTMV1", "CuDNNGRU", "CuDNNLSTM")


def classify_config(class_name: str, config: dict[str, Any]
                    ) -> tuple[LayerKind, float, dict[str, Any]] | None:
    """:func:`classify_layer` for a layer known only by its saved class name and config
    (a tf-keras SavedModel's metadata): the dropout family and RNNs with dropout."""
    kind = _CONFIG_KINDS.get(class_name)
    if kind is not None:
        rate = float(config.get("stddev" if kind is LayerKind.GAUSSIAN_NOISE else "rate") or 0)
        if kind is LayerKind.DROPOUT and config.get("noise_shape") is not None:
            return LayerKind.NOISE_SHAPE, rate, {"noise_shape": list(config["noise_shape"])}
        return kind, rate, {}
    if class_name == "Bidirectional":
        inner = config.get("layer") or {}
        return classify_config(inner.get("class_name", ""), inner.get("config") or {})
    if class_name in _CONFIG_RNNS:
        rate = float(config.get("dropout") or 0.0)
        recurrent = float(config.get("recurrent_dropout") or 0.0)
        if rate > 0 or recurrent > 0:
            return LayerKind.RNN, rate, {"recurrent_dropout": recurrent}
    return None


def holds_seed_generator(layer: Any, keras: ModuleType) -> bool:
    """Whether the layer keeps a ``keras.random.SeedGenerator`` as an attribute."""
    return any(isinstance(value, keras.random.SeedGenerator) for value in vars(layer).values())


def is_keras_layer_class(layer: Any) -> bool:
    """Whether the layer's class comes from Keras' own layer or model packages."""
    return type(layer).__module__.startswith(KERAS_LAYER_MODULES)


def is_augmentation(layer: Any, keras: ModuleType) -> bool:
    """A Keras preprocessing layer with a seed generator: random only when training."""
    return type(layer).__module__.startswith(KERAS_PREPROCESSING) and \
        holds_seed_generator(layer, keras)


def _inside(path: str, owners: set[str]) -> bool:
    """Whether ``path`` is one of ``owners`` or nested inside one."""
    return any(path == owner or path.startswith(owner + "/") for owner in owners)


@dataclass
class LayerSurvey:
    """What :func:`survey_layers` found: classified layers, and layers to probe."""

    random_layers: list[RandomLayer]
    """Dropout-family layers and augmentation layers, in breadth-first order."""
    probe_candidates: list[tuple[str, Any]]
    """``(path, layer)`` of layers whose randomness only a training-mode trace can reveal."""


def survey_layers(model: Any, keras: ModuleType) -> LayerSurvey:
    """Classify every layer of ``model`` (see the module docstring)."""
    found: list[RandomLayer] = []
    owners: set[str] = set()
    candidates: list[tuple[str, Any]] = []
    for path, layer in iter_sublayers(model):
        if _inside(path, owners):
            continue  # an RNN's cell, or the layers of an augmentation pipeline
        classified = classify_layer(layer, keras)
        if classified is not None:
            kind, rate, details = classified
            found.append(RandomLayer(path, type(layer).__name__, kind, rate, details, layer))
            owners.add(path)
        elif is_augmentation(layer, keras):
            found.append(RandomLayer(path, type(layer).__name__, LayerKind.AUGMENTATION, None,
                                     {}, layer))
            owners.add(path)
        elif not is_keras_layer_class(layer) or holds_seed_generator(layer, keras):
            candidates.append((path, layer))
    return LayerSurvey(found, candidates)


def find_dropout_sites(model: Any, keras: ModuleType) -> list[RandomLayer]:
    """The dropout-family layers of ``model`` (by class), including nested ones."""
    return [layer for layer in survey_layers(model, keras).random_layers
            if layer.kind is not LayerKind.AUGMENTATION]
