"""Reports as strict-JSON values, declared once.

Every report is a frozen dataclass; :class:`JsonReport` gives each the same
``to_dict``: its fields by name, recursively, with enums as their values, tuples as
lists and each :class:`~spatialdrop_onnx.sites.Site` as ``Site.to_dict`` (which has
the one real rule: a non-finite ratio is null). A report that adds a derived key
says so beside its class.
"""

from __future__ import annotations

from dataclasses import fields, is_dataclass
from enum import Enum
from typing import Any


def json_value(value: object) -> Any:  # noqa: ANN401 - any JSON value
    """``value`` as plain dicts, lists and scalars (see the module docstring)."""
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict) and not isinstance(value, type):
        return to_dict()  # a report, or a record with its own rules (Site)
    if is_dataclass(value) and not isinstance(value, type):
        return fields_dict(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [json_value(item) for item in value]
    if isinstance(value, dict):
        return {key: json_value(item) for key, item in value.items()}
    return value


def fields_dict(record: object) -> dict[str, Any]:
    """A dataclass's fields by name, each through :func:`json_value`."""
    return {f.name: json_value(getattr(record, f.name)) for f in fields(record)}


class JsonReport:
    """Mixin for report dataclasses: ``to_dict`` is :func:`fields_dict` of the report."""

    def to_dict(self) -> dict[str, Any]:
        return fields_dict(self)
