"""The protobuf dialect every layer shares: scopes, names, opsets, constants, types, the switch.

Passes that must be fast on huge graphs (strip, inspect, the function bodies)
work on ``onnx.ModelProto`` directly; this package is their one vocabulary, one module per idea:

* :func:`model_scopes` walks every node container — the main graph, If/Loop/Scan
  bodies at any depth, model-local functions and their subgraphs — as
  :class:`Scope` records (path for messages, :data:`ScopeKey` — the key the onnx_ir
  side computes too —, owning function, opset, parent);
* :func:`check_acyclic` refuses a graph whose nodes depend on their own outputs;
* :class:`NameMaker` hands out names that collide with nothing in the model;
* :class:`Constants` answers "is this name a small known constant here?";
* :func:`infer_types` runs onnx shape inference (isolated: it can abort on
  malformed models) and keeps the facts **per scope**, so a value inside a
  function never takes the type of a same-named value of the main graph;
* the ``training_mode`` switch, for every pass: :func:`switch_input` finds it
  (:func:`is_switch_type`), :func:`thread_training_switch` defines it wherever a
  node reads it (graph input with a default; function input passed on by every
  call site), :func:`drop_unused_training_switch` undoes that,
  :func:`turn_switch_on` and :func:`take_switch_default` serve mc and inline;
* :func:`dropout_to_spatial` writes an ONNX ``Dropout`` that trains as
  ``SpatialDropout(shared_axes=[])`` (where a runtime's own ``Dropout`` would not do).
"""

from __future__ import annotations

from .constants import Constants, constant_tensor, holds_values, scalar_of
from .elementwise import dropout_to_spatial, dropout_trains, has_training_dropout
from .names import NameMaker, all_names, rename_values
from .nodes import (
    DEFAULT_DOMAINS,
    MAX_CONSTANT_ELEMENTS,
    RANDOM_OPS,
    check_opset_imports,
    default_opset,
    get_attr,
    input_at,
    is_default_domain,
    is_onnx_dropout,
    is_random,
    is_spatial_dropout,
    names_read,
    subgraphs,
)
from .order import check_acyclic
from .ours import drop_our_unused_functions, import_our_domain
from .scopes import (
    MAIN_KEY,
    Scope,
    ScopeKey,
    ScopesDisagree,
    check_same_scopes,
    function_key,
    function_path,
    iter_nodes,
    model_scopes,
    subgraph_key,
    subgraph_path,
    top_scopes,
    unchanged_scopes,
)
from .switch import (
    TRAINING_MODE,
    add_training_input,
    check_training_switch_name,
    drop_unused_training_switch,
    is_switch_type,
    remove_inputs,
    set_training_default,
    switch_input,
    take_switch_default,
    thread_training_switch,
    turn_switch_on,
)
from .types import (
    Dims,
    TypeFacts,
    ValueType,
    declared_types,
    infer_types,
    skeleton_in_place,
    type_facts,
)

__all__ = [
    "DEFAULT_DOMAINS", "MAIN_KEY", "MAX_CONSTANT_ELEMENTS", "RANDOM_OPS", "TRAINING_MODE",
    "Constants", "Dims", "NameMaker", "Scope", "ScopeKey", "ScopesDisagree", "TypeFacts",
    "ValueType", "add_training_input", "all_names", "check_acyclic", "check_opset_imports",
    "check_same_scopes", "check_training_switch_name", "constant_tensor", "declared_types",
    "default_opset", "drop_our_unused_functions", "drop_unused_training_switch",
    "dropout_to_spatial", "dropout_trains", "has_training_dropout",
    "function_key", "function_path", "get_attr", "holds_values", "import_our_domain",
    "infer_types", "input_at", "is_default_domain", "is_onnx_dropout", "is_random",
    "is_spatial_dropout", "is_switch_type", "iter_nodes", "model_scopes", "names_read",
    "remove_inputs", "rename_values", "scalar_of", "set_training_default", "skeleton_in_place",
    "subgraph_key", "subgraph_path", "subgraphs", "switch_input", "take_switch_default",
    "thread_training_switch", "top_scopes", "turn_switch_on", "type_facts", "unchanged_scopes",
]
