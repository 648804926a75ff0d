"""Which Keras layer made an ONNX node: attribution by TensorFlow name scope.

tf2onnx names a node after the TensorFlow op it came from
(``model/block2b_drop/stateless_dropout/Mul`` plus maybe a ``__12`` suffix),
and the trace records the name scope each layer ran under
(:class:`~.keras_trace.TracedModel`). A node belongs to the layer whose scope
is the longest prefix of its name (or, for nodes tf2onnx named itself, of one
of its output names). Nodes tf2onnx created without a scope (layout
``Transpose``s) belong to no layer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TypeVar

import onnx

from ..sites import Site

T = TypeVar("T")


def layer_of_name(name: str, scopes: Mapping[str, str]) -> str | None:
    """The Keras layer path whose name scope is the longest prefix of ``name`` (by component)."""
    parts = name.split("/")
    for end in range(len(parts), 0, -1):
        path = scopes.get("/".join(parts[:end]))
        if path is not None:
            return path
    return None


def layer_of_node(node: onnx.NodeProto, scopes: Mapping[str, str]) -> str | None:
    """The layer that made ``node``: by its name, else by the name of one of its outputs."""
    for name in (node.name, *node.output):
        path = layer_of_name(name, scopes) if name else None
        if path is not None:
            return path
    return None


def owner(path: str | None, layers: Mapping[str, T]) -> T | None:
    """The entry of ``layers`` at ``path`` or at the nearest enclosing path (a cell's RNN)."""
    while path:
        if path in layers:
            return layers[path]
        path = path.rpartition("/")[0]
    return None


def sites_by_layer(sites: Iterable[Site], scopes: Mapping[str, str], layers: Mapping[str, T]
                   ) -> tuple[dict[str, list[Site]], list[Site]]:
    """Rewrite sites grouped by the layer (a key of ``layers``) owning them, and the rest.

    A site is named after the node it replaced, so its name carries that node's scope.
    """
    owned: dict[str, list[Site]] = {}
    unowned: list[Site] = []
    paths = {path: path for path in layers}
    for site in sites:
        found = owner(layer_of_name(site.name, scopes), paths)
        if found is None:
            unowned.append(site)
        else:
            owned.setdefault(found, []).append(site)
    return owned, unowned
