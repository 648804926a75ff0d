"""The ``spatialdrop-onnx`` command line: ``app`` (a click group) and ``main`` (the entry point)."""

from .app import app, main

__all__ = ["app", "main"]
