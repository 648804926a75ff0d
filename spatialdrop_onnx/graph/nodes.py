"""Nodes and opsets: which ops are dropout or random, attributes, subgraphs, opset imports."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import onnx
from onnx import AttributeProto, GraphProto, NodeProto

from .. import spec
from ..errors import UserError, printable

DEFAULT_DOMAINS = ("", "ai.onnx")
#: Random ops of the ONNX and TensorFlow vocabularies.
RANDOM_OPS = frozenset({
    "RandomUniform", "RandomUniformLike", "RandomNormal", "RandomNormalLike",
    "Bernoulli", "Multinomial",
    "StatelessRandomUniformV2", "StatelessRandomUniform", "RandomUniformInt",
    "StatelessRandomNormalV2", "StatelessTruncatedNormalV2", "RandomStandardNormal",
    "StatelessRandomUniformIntV2", "StatelessRandomUniformFullIntV2",
})
#: Constants larger than this are never materialised to answer a question about them.
MAX_CONSTANT_ELEMENTS = 64


def is_default_domain(domain: str) -> bool:
    return domain in DEFAULT_DOMAINS


def is_onnx_dropout(node: NodeProto) -> bool:
    return node.op_type == "Dropout" and node.domain in DEFAULT_DOMAINS


def is_spatial_dropout(node: NodeProto) -> bool:
    return node.op_type == spec.OP_TYPE and node.domain == spec.DOMAIN


def is_random(node: NodeProto) -> bool:
    return node.op_type in RANDOM_OPS


def get_attr(node: NodeProto, name: str) -> AttributeProto | None:
    return next((attr for attr in node.attribute if attr.name == name), None)


def subgraphs(node: NodeProto) -> Iterator[tuple[AttributeProto, GraphProto]]:
    """The (attribute, graph) pairs of a node's graph-valued attributes (If/Loop/Scan bodies)."""
    for attr in node.attribute:
        if attr.ref_attr_name:  # a function's reference to its caller's attribute: no graph
            continue
        if attr.type == AttributeProto.GRAPH:
            yield attr, attr.g
        elif attr.type == AttributeProto.GRAPHS:
            for graph in attr.graphs:
                yield attr, graph


def names_read(node: NodeProto) -> list[str]:
    """The names a node reads, its subgraphs' references to outer values included."""
    names = [n for n in node.input if n]
    if node.attribute:  # most nodes have none: skip the scan
        for _, sub in subgraphs(node):
            names.extend(_free_names(sub))
    return names


def _free_names(graph: GraphProto) -> set[str]:
    """The names a subgraph reads from enclosing scopes."""
    defined = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    used: set[str] = set()
    for node in graph.node:
        used.update(n for n in names_read(node) if n not in defined)
        defined.update(node.output)
    used.update(o.name for o in graph.output if o.name not in defined)
    return used


def input_at(node: NodeProto, index: int) -> str:
    """Input ``index`` of ``node``, or "" when it is omitted."""
    return node.input[index] if len(node.input) > index else ""


# --- Opsets --------------------------------------------------------------------------


def default_opset(opset_imports: Iterable[onnx.OperatorSetIdProto]) -> int:
    """The default-domain opset version of these imports (0 if none)."""
    return next((o.version for o in opset_imports if o.domain in DEFAULT_DOMAINS), 0)


def check_opset_imports(model: onnx.ModelProto) -> None:
    """Refuse models that import the default domain twice (the version would be ambiguous)."""
    for owner, label in [(model, "the model"),
                         *((f, f"function {printable(f.name)}") for f in model.functions)]:
        defaults = [o for o in owner.opset_import if o.domain in DEFAULT_DOMAINS]
        if len(defaults) > 1:
            versions = ", ".join(f"{printable(o.domain) or '(empty)'}:{o.version}"
                                 for o in defaults)
            raise UserError(f"{label} imports the default ONNX domain {len(defaults)} times "
                            f"({versions}); keep one import")
