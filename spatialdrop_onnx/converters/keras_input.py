"""Reading a Keras model safely: format checks before TensorFlow, safe loading, user modules.

``.keras`` archives always load with ``safe_mode=True``; ``.h5``/``.hdf5`` files
and SavedModel directories can run code when loaded and are refused unless the
caller trusts them. Keras' nested load errors become one line that says what
to do (``--import`` for a custom layer, re-save for a Lambda layer).
"""

from __future__ import annotations

import importlib
import os
import re
import stat
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import RefusedError, UserError, printable
from ..modelio import open_input
from .keras_archive import check_keras_archive
from .keras_layers import RandomLayer, classify_config
from .keras_legacy import keras_version, translated_h5
from .keras_stack import KerasStack, first_line

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


#: Why an input file above 2 GiB - 1 is refused: its weights could not be written.
_KERAS_LIMIT = ("a converted model can hold (protobuf's 2 GiB - 1, the ONNX model is written "
                "without external data)")


def detect_format(path: Path) -> str:
    """``keras``, ``h5`` or ``savedmodel`` for ``path``; UserError for anything else.

    A file is opened as the ONNX commands open theirs (:func:`modelio.open_input`):
    a FIFO, device or socket (also behind a symlink) is refused before it is
    opened for reading, as are an empty file and one above 2 GiB - 1; the head
    and the zip directory are read through that one descriptor.
    """
    try:
        is_dir = stat.S_ISDIR(os.stat(path).st_mode)  # follows a symlink; opens nothing
    except FileNotFoundError:
        raise UserError(f"{printable(path)}: no such file or directory") from None
    except OSError as err:
        raise UserError(f"{printable(path)}: cannot be inspected ({err.strerror})") from None
    if is_dir:
        if (path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file():
            return "savedmodel"
        raise UserError(f"{path}: is a directory but not a TensorFlow SavedModel "
                        "(expected a Keras 3 .keras file)")
    fd, info = open_input(path, expected="a Keras model", limit=_KERAS_LIMIT)
    with os.fdopen(fd, "rb") as handle:
        try:
            head = handle.read(8)
        except OSError as err:
            raise UserError(f"{path}: cannot read the file ({err.strerror})") from None
        if path.suffix.lower() in (".h5", ".hdf5") or head == _HDF5_MAGIC:
            return "h5"
        if path.suffix.lower() != ".keras":
            raise UserError(f"{path}: not a Keras model file (expected a Keras 3 .keras "
                            "archive; .h5/.hdf5 files and SavedModel directories need "
                            "--trust-model)")
        try:
            with zipfile.ZipFile(handle) as archive:
                names = set(archive.namelist())
        except (zipfile.BadZipFile, OSError):
            raise UserError(f"{path}: not a Keras .keras archive (not a zip file)") from None
        if "config.json" not in names:
            raise UserError(f"{path}: not a Keras .keras archive (no config.json inside)")
        # a zip bomb is refused before anything is extracted
        check_keras_archive(path, handle=handle, size=info.st_size)
    return "keras"


def refuse_untrusted(path: Path, source_format: str, trust_model: bool) -> None:
    """Refuse formats that can execute code on load unless the user trusts the file."""
    if trust_model or source_format == "keras":
        return
    what = {"h5": "an HDF5 (.h5/.hdf5) model: Keras does not apply safe_mode to HDF5 files",
            "savedmodel": "a TensorFlow SavedModel: a SavedModel is a program"}[source_format]
    raise RefusedError(f"{path}: refusing to load {what}, and loading it can run arbitrary "
                       "code; re-save it as .keras, or pass --trust-model if you trust its "
                       "source")


def import_modules(names: Sequence[str]) -> None:
    """Import the user's modules so their registered Keras layers can be deserialized."""
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as err:  # noqa: BLE001 - any failure in user code is a user error
            raise UserError(f"--import {name}: cannot import the module "
                            f"({err.__class__.__name__}: {first_line(err)})") from None


def _exception_chain(err: BaseException) -> list[BaseException]:
    """``err`` and its causes, outermost first (Keras wraps the real reason several times)."""
    chain = [err]
    while (nxt := chain[-1].__cause__ or chain[-1].__context__) is not None and nxt not in chain:
        chain.append(nxt)
    return chain


def _explain_load_error(path: Path, err: Exception) -> UserError:
    chain = _exception_chain(err)
    texts = [str(e) for e in chain]
    if any("safe_mode" in t for t in texts):
        return RefusedError(f"{path}: refused by Keras safe mode: the model holds Python code "
                            "(e.g. a Lambda layer) that would run when loaded; this tool always "
                            "loads .keras files with safe_mode=True")
    for text in reversed(texts):
        missing = re.search(r"Could not locate (class|function) '([^']+)'", text)
        if missing:
            module = re.search(r"'module': '([^']+)'", text)
            origin = f" from module '{module.group(1)}'" if module else ""
            return RefusedError(
                f"{path}: cannot load the model: it names the {missing.group(1)} "
                f"'{missing.group(2)}'{origin}, which Keras does not know or will not load in "
                "safe mode (for a custom layer of an installed package, pass --import MODULE)")
    innermost = chain[-1]
    return UserError(f"{path}: cannot load the Keras model: "
                     f"{innermost.__class__.__name__}: {first_line(innermost)}")


class SavedModelFunction:
    """A SavedModel's ``serving_default`` signature, shaped like a Keras model for tracing.

    A SavedModel is an exported graph, not Keras layers: dropout layers cannot
    be found in it, so it converts with whatever the export kept (usually the
    inference graph).
    """

    def __init__(self, signature: Any, stack: KerasStack, keep_alive: Any = None,
                 random_layers: Sequence[RandomLayer] | None = None) -> None:
        self._signature = signature
        self._keep_alive = keep_alive  # the signature needs its object graph alive
        _, kwargs = signature.structured_input_signature
        self.input_names = sorted(kwargs)
        self.specs = [stack.tf.TensorSpec(kwargs[n].shape, kwargs[n].dtype, name=n)
                      for n in self.input_names]
        #: The random layers a tf-keras SavedModel's ``keras_metadata.pb`` lists (each
        #: inference-only: the serving signature is the inference graph).
        self.random_layers: list[RandomLayer] = list(random_layers or [])
        #: Whether the SavedModel has Keras metadata (Keras 3 ``model.export`` and plain
        #: TensorFlow SavedModels have none: their layers cannot be known).
        self.has_keras_metadata = random_layers is not None

    def layers_warning(self) -> str:
        """What the report says about finding dropout layers in this SavedModel."""
        if not self.has_keras_metadata:
            return ("a SavedModel holds no Keras layers and this one no Keras metadata: "
                    "whether it had dropout layers cannot be known; its serving signature "
                    "(usually the inference graph) is converted as it is")
        return (f"a SavedModel is converted from its serving signature, the inference "
                f"graph: its Keras metadata lists {len(self.random_layers)} random layer(s), "
                "none of which can be kept random (re-save the model as .keras, or as .h5, "
                "to keep them)")

    def __call__(self, *args: Any) -> dict[str, Any]:
        return self._signature(**dict(zip(self.input_names, args, strict=True)))


def load_model(path: Path, source_format: str, stack: KerasStack) -> Any:
    """Load a Keras model (``safe_mode=True``), or a SavedModel's serving function."""
    keras = stack.keras
    if source_format == "savedmodel":
        return _load_savedmodel(path, stack)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Keras' build/compile hints are not the user's concern
            if source_format == "h5" and _written_by_keras2(path):
                model = _load_keras2_h5(path, keras)
            else:
                model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except UserError as err:
        raise UserError(f"{path}: {err}") from None
    except Exception as err:  # noqa: BLE001 - Keras raises many types for bad files
        raise _explain_load_error(path, err) from None
    if not isinstance(model, keras.Model):
        raise UserError(f"{path}: holds a {type(model).__name__}, not a Keras model")
    return model


def _written_by_keras2(path: Path) -> bool:
    """Whether an HDF5 model was written by Keras 2 (tf-keras, or standalone Keras 2)."""
    try:
        version = keras_version(path)
    except Exception:  # noqa: BLE001 - not readable by h5py: Keras' own loader explains
        return False
    return version is not None and version.split(".")[0] in ("1", "2")


def _load_keras2_h5(path: Path, keras: Any) -> Any:
    """Load a Keras 2 ``.h5`` with Keras 3, its legacy config translated (:mod:`.keras_legacy`)."""
    with translated_h5(path, keras) as (copy, _):
        return keras.saving.load_model(copy, compile=False, safe_mode=True)


def _load_savedmodel(path: Path, stack: KerasStack) -> SavedModelFunction:
    try:
        loaded = stack.tf.saved_model.load(str(path))
        signature = loaded.signatures["serving_default"]
    except KeyError:
        raise UserError(f"{path}: the SavedModel has no 'serving_default' signature") from None
    except Exception as err:  # noqa: BLE001 - TensorFlow raises many types for bad folders
        raise UserError(f"{path}: cannot load the SavedModel: {first_line(err)}") from None
    return SavedModelFunction(signature, stack, keep_alive=loaded,
                              random_layers=savedmodel_random_layers(path))


#: tf-keras writes its layers' configs beside ``saved_model.pb`` in this file.
KERAS_METADATA = "keras_metadata.pb"
_METADATA_REASON = ("a SavedModel is converted from its serving signature, the inference "
                    "graph, where this layer draws nothing; exported for inference only")


def _saved_metadata_type() -> Any:
    """The ``SavedMetadata`` protobuf message of tf-keras (``saved_metadata.proto``).

    Declared here (field numbers as tf-keras defines them) because TensorFlow 2.16+
    no longer ships tf-keras' protobuf modules: ``SavedMetadata { repeated SavedObject
    nodes = 1; }``, ``SavedObject { int32 node_id = 2; string node_path = 3;
    string identifier = 4; string metadata = 5; }``.
    """
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    proto = descriptor_pb2.FileDescriptorProto(name="spatialdrop_saved_metadata.proto",
                                               package="spatialdrop_keras_metadata")
    item = proto.message_type.add(name="SavedObject")
    for number, name, kind in ((2, "node_id", "TYPE_INT32"), (3, "node_path", "TYPE_STRING"),
                               (4, "identifier", "TYPE_STRING"),
                               (5, "metadata", "TYPE_STRING")):
        item.field.add(name=name, number=number, label=1,
                       type=descriptor_pb2.FieldDescriptorProto.Type.Value(kind))
    whole = proto.message_type.add(name="SavedMetadata")
    whole.field.add(name="nodes", number=1, label=3, type=11,
                    type_name=".spatialdrop_keras_metadata.SavedObject")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("spatialdrop_keras_metadata.SavedMetadata"))


def savedmodel_random_layers(path: Path) -> list[RandomLayer] | None:
    """The random layers a tf-keras SavedModel's metadata lists, or None without metadata.

    Each is inference-only: the converter traces the serving signature, in which
    tf-keras saved every layer in inference mode.
    """
    import json

    metadata_file = path / KERAS_METADATA
    if not metadata_file.is_file():
        return None
    try:
        metadata = _saved_metadata_type().FromString(metadata_file.read_bytes())
    except Exception:  # noqa: BLE001 - a damaged metadata file: treat as absent
        return None
    found: list[RandomLayer] = []
    for node in metadata.nodes:
        try:
            entry = json.loads(node.metadata)
        except ValueError:
            continue
        if not isinstance(entry, dict) or not isinstance(entry.get("config"), dict):
            continue
        classified = classify_config(str(entry.get("class_name", "")), entry["config"])
        if classified is None:
            continue
        kind, rate, details = classified
        name = str(entry.get("name") or node.node_path)
        found.append(RandomLayer(name, str(entry["class_name"]), kind, rate, details,
                                 inference_only=_METADATA_REASON))
    return [layer for layer in found if layer.active]
