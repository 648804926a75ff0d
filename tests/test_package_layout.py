"""The package's own descriptions name modules that exist."""

from __future__ import annotations

import re
from pathlib import Path

import spatialdrop_onnx.converters as converters


def test_converters_docstring_names_only_existing_modules() -> None:
    folder = Path(converters.__file__).parent
    named = set(re.findall(r"``(\w+)``", converters.__doc__ or ""))
    modules = {path.stem for path in folder.glob("*.py")}
    assert named - {"spatialdrop_onnx", "convert"} <= modules, named - modules
