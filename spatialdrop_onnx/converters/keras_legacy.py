"""Keras 2 (tf-keras) ``.h5`` files for Keras 3's loader: the legacy config, translated.

Keras 3 reads legacy HDF5 files through its legacy loader, which already maps
``batch_input_shape`` and old ``inbound_nodes``; what it does not map are the
settings Keras 2 wrote for every layer that some Keras 3 layer classes no
longer take: ``SpatialDropout1D(trainable=…, noise_shape=None)`` fails with
``__init__() got an unexpected keyword argument 'trainable'``, a GRU with
``time_major``/``implementation`` with "Unrecognized keyword arguments", and
a layer nested in ``TimeDistributed``/``Bidirectional`` that Keras 2 (before
2.13) wrote without ``module`` is "Could not locate class 'Dense'".

:func:`translate_config` walks the saved config (nested models, wrapped layers,
RNN cells) and removes, per layer, the settings its Keras 3 class does not
accept — only when dropping them cannot change what the model computes at
inference: ``trainable``, ``implementation`` (a speed choice), ``input_length``
(a shape hint), and settings left
at ``None``/``False`` (``noise_shape=None`` of SpatialDropout, ``time_major=False``).
Any other unknown setting is an error naming the layer, never a silent change.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserError, printable

#: Keras 2 settings that never change inference output, dropped where Keras 3 lacks them
#: (``input_length``: a shape hint Keras 3's Embedding pops and ignores).
INFERENCE_NEUTRAL = frozenset({"trainable", "implementation", "input_length"})
#: Classes built by their own ``from_config`` from a structure, not from ``__init__`` kwargs.
_CONTAINERS = frozenset({"Functional", "Model", "Sequential"})


@dataclass
class Translation:
    """What :func:`translate_config` changed."""

    dropped: list[str] = field(default_factory=list)
    """``layer.setting`` entries removed."""


def keras_version(path: Path) -> str | None:
    """The ``keras_version`` an HDF5 model file was written by (None if unrecorded)."""
    import h5py

    with h5py.File(path, "r") as handle:
        value = handle.attrs.get("keras_version")
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return None if value is None else str(value)


def _layer_class(name: str, keras: Any) -> type | None:
    """The Keras 3 layer class a saved ``class_name`` resolves to (registered ones too)."""
    found = keras.saving.get_registered_object(name) or getattr(keras.layers, name, None)
    if isinstance(found, type) and issubclass(found, keras.layers.Layer):
        return found
    return None


def accepted_settings(cls: type, keras: Any) -> set[str] | None:
    """The keyword arguments ``cls(**config)`` accepts; None if any is (no check possible).

    Follows ``**kwargs`` up the class hierarchy to ``keras.layers.Layer``, which
    accepts its own named arguments and ``input_dim``/``input_shape``.
    """
    names: set[str] = set()
    for klass in cls.__mro__:
        init = vars(klass).get("__init__")
        if init is None:
            continue
        parameters = inspect.signature(init).parameters.values()
        names |= {p.name for p in parameters
                  if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"}
        if klass is keras.layers.Layer:
            return names | {"input_dim", "input_shape"}
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            return names
    return None


def translate_config(config: Any, keras: Any, translation: Translation | None = None,
                     ) -> Translation:
    """Make a Keras 2 model config loadable by Keras 3, in place (see the module doc)."""
    translation = translation if translation is not None else Translation()
    if isinstance(config, list):
        for item in config:
            translate_config(item, keras, translation)
        return translation
    if not isinstance(config, dict):
        return translation
    settings = config.get("config")
    class_name = config.get("class_name")
    if isinstance(class_name, str) and isinstance(settings, dict) and \
            class_name not in _CONTAINERS:
        cls = _layer_class(class_name, keras)
        if cls is not None and "module" not in config:
            # Keras 2 (before 2.13) wrote nested layers without a module; Keras 3's wrappers
            # (TimeDistributed, Bidirectional) deserialize them by module.
            builtin = getattr(keras.layers, class_name, None) is cls
            config["module"] = "keras.layers" if builtin else cls.__module__
            config["registered_name"] = None if builtin else \
                keras.saving.get_registered_name(cls)
        shape = settings.pop("batch_input_shape", None)
        if shape is not None:  # Keras 3: InputLayer(batch_shape=…), other layers input_shape
            if class_name == "InputLayer":
                settings.setdefault("batch_shape", shape)
            else:
                settings.setdefault("input_shape", shape[1:])
        accepted = accepted_settings(cls, keras) if cls is not None else None
        if accepted is not None:
            layer = printable(settings.get("name", class_name))
            for key in [k for k in settings if k not in accepted]:
                value = settings[key]
                if key not in INFERENCE_NEUTRAL and value not in (None, False):
                    raise UserError(
                        f"a Keras 2 layer '{layer}' ({printable(class_name)}) has the setting "
                        f"{printable(key)}={printable(json.dumps(value), limit=60)}, which "
                        f"Keras 3's {printable(class_name)} does not have; it cannot be "
                        "converted without changing the model")
                del settings[key]
                translation.dropped.append(f"{layer}.{key}")
    for value in config.values():
        translate_config(value, keras, translation)
    return translation


@contextlib.contextmanager
def translated_h5(path: Path, keras: Any) -> Iterator[tuple[Path, Translation]]:
    """A temporary copy of a Keras 2 ``.h5`` file whose config Keras 3 can load.

    The weights are copied as they are (Keras 3's legacy loader reads Keras 2
    weight groups); only the ``model_config`` attribute changes. The copy is
    deleted on exit.
    """
    import h5py

    with tempfile.TemporaryDirectory(prefix="spatialdrop-h5-") as folder:
        copy = Path(folder) / "model.h5"
        shutil.copyfile(path, copy)
        with h5py.File(copy, "r+") as handle:
            raw = handle.attrs.get("model_config")
            if raw is None:
                raise UserError("the HDF5 file holds no model config (a weights-only file?)")
            if isinstance(raw, bytes):
                raw = raw.decode("utf-8")
            config = json.loads(raw)
            translation = translate_config(config, keras)
            handle.attrs["model_config"] = json.dumps(config)
        yield copy, translation
