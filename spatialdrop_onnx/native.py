"""The native ONNX Runtime kernel for SpatialDropout (built from ``ops/`` by the install).

``session_options()`` makes ``onnxruntime.SessionOptions`` with the library registered,
``register_kernel(so)`` registers it on options of the caller's;
sessions created with it run SpatialDropout nodes natively, and onnxruntime
prefers the kernel over a model-local function body of the same name, so
``make_portable`` models switch to the fast path without changes.

A seeded node's k-th run (per node, per session) is bit-identical to
``reference.spatial_dropout(..., seed=seed, call_index=k)``.
"""

from __future__ import annotations

import importlib.resources
import sys
import threading
import weakref

import onnxruntime as ort

from .errors import MissingDependency

# CMake MODULE libraries: "lib<name>.so" on Linux and macOS, "<name>.dll" on Windows.
_LIBRARY_NAMES = {"win32": "spatialdrop_ops.dll"}
_DEFAULT_LIBRARY_NAME = "libspatialdrop_ops.so"

# SessionOptions that already carry the library: registering it twice on one
# object would add the custom-op domain twice.
_registered: weakref.WeakSet[ort.SessionOptions] = weakref.WeakSet()
_lock = threading.Lock()


class NativeLibraryMissing(MissingDependency):
    """The compiled kernel is not installed with the package (exit code 6)."""


def library_name() -> str:
    """File name of the compiled kernel on this platform."""
    return _LIBRARY_NAMES.get(sys.platform, _DEFAULT_LIBRARY_NAME)


def get_library_path() -> str:
    """Absolute path of the native kernel library, for ``register_custom_ops_library``.

    Works for regular and editable installs (where the library sits in
    site-packages while the Python sources stay in the checkout). Raises
    NativeLibraryMissing if the package was installed without building it.
    """
    resource = importlib.resources.files(__package__) / library_name()
    if resource.is_file():
        with importlib.resources.as_file(resource) as path:
            return str(path)
    raise NativeLibraryMissing(
        f"the native SpatialDropout kernel ({library_name()}) is not installed next to the "
        "spatialdrop_onnx package: reinstall with `pip install .` (or `pip install -e .`), "
        "which builds it from ops/ (needs a C++17 compiler, CMake and npm or "
        "SPATIALDROP_ORT_INCLUDE_DIR; see docs/native-kernel.md)"
    )


def session_options(so: None = None) -> ort.SessionOptions:
    """New ``onnxruntime.SessionOptions`` with the native kernel registered.

    Changes nothing of the caller's: to add the kernel to options you already
    have, call :func:`register_kernel` (which says that it changes them).
    """
    if so is not None:
        raise TypeError(
            "session_options() makes new options and changes none of yours; to register the "
            "kernel on your own SessionOptions, call spatialdrop_onnx.register_kernel(so)")
    return register_kernel(ort.SessionOptions())


def register_kernel(so: ort.SessionOptions) -> ort.SessionOptions:
    """Register the native kernel on ``so`` itself and return it.

    Safe to call again on the same object (the library is registered once per
    object: twice would make session creation fail with "Domain already set in
    registry") and for any number of sessions and threads in one process.
    """
    with _lock:
        if so not in _registered:
            so.register_custom_ops_library(get_library_path())
            _registered.add(so)
    return so

