"""Loading and saving ONNX files that may come from anyone.

* :func:`load_model` refuses by kind and size before reading, reads through
  one descriptor, parses, checks versions and validates every external-data
  reference on the parsed model (:mod:`.external`); it returns a
  :class:`LoadedModel` that remembers the input's identity and data files.
* :func:`validate_external_data` inspects files with ``lstat`` only; nothing
  is resolved against the working directory.
* :func:`read_external_bytes` is the one place external data is read: a
  bounded read of one small tensor from its re-validated file.
* :func:`open_input` is how every input file (ONNX, Keras) is opened: kind
  and size checked before anything is read, a FIFO or device never opened.
* :func:`save_model` writes the model and its data files as one unit
  (:mod:`.writing`), reading and deleting nothing it did not create;
  :func:`check_output_path` raises its path errors early.
* :func:`iter_tensors` walks every place a ``TensorProto`` can sit.
* ``load_model(path, skeleton=True)`` leaves large embedded tensors in the
  file (:mod:`.skeleton`): placeholders that :func:`save_model` copies from
  the source file and :func:`fill_placeholders` reads back into memory.

``docs/reliability.md`` lists each probe these functions are tested against.
"""

from .external import (
    KNOWN_EXTERNAL_KEYS,
    ExternalFile,
    read_external_bytes,
    validate_external_data,
)
from .reading import (
    MAX_MODEL_BYTES,
    MIN_IR_VERSION,
    LoadedModel,
    check_versions,
    load_model,
    open_input,
)
from .skeleton import (
    SkeletonSource,
    fill_placeholders,
    holds_placeholders,
    is_placeholder,
)
from .tensors import external_tensors, is_external, iter_tensors
from .writing import (
    TEMP_PATTERN,
    check_output_path,
    data_file_pattern,
    is_temp_name,
    save_model,
)

__all__ = [
    "KNOWN_EXTERNAL_KEYS",
    "MAX_MODEL_BYTES",
    "MIN_IR_VERSION",
    "TEMP_PATTERN",
    "ExternalFile",
    "LoadedModel",
    "SkeletonSource",
    "check_output_path",
    "check_versions",
    "data_file_pattern",
    "external_tensors",
    "fill_placeholders",
    "holds_placeholders",
    "is_external",
    "is_placeholder",
    "is_temp_name",
    "iter_tensors",
    "load_model",
    "open_input",
    "read_external_bytes",
    "save_model",
    "validate_external_data",
]
