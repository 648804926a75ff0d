"""Optional dependencies in tests.

``require(module)`` imports an optional dependency. In CI (``CI`` set) a
missing dependency is a test failure, never a skip; on a developer machine it
skips with the reason.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false")


def require(module: str) -> ModuleType:
    """Import ``module``; fail in CI, skip elsewhere, when it is missing."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        if in_ci():
            pytest.fail(f"{module} is required in CI but cannot be imported: {err}")
        pytest.skip(f"{module} not installed: {err}")
