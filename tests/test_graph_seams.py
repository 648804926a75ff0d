"""One training switch for every pass; one scope key for the protobuf and onnx_ir walks.

The switch (``graph/switch.py``): strip, mc and inline find it with one test — the
main-graph input ``training_mode`` that is a boolean scalar or a boolean of undeclared
shape — so the model's own ``training_mode`` of another type is left alone by all
three, and a switch read inside a function and an If body is handled by each.

The scopes (``graph/scopes.py``): the protobuf walk and rewrite's onnx_ir walk key
every scope the same way; when they disagree rewrite fails loudly instead of going on
without type facts.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import onnx_ir as ir
import pytest
from passes_helpers import assert_same, flag, full_check, parse, run, sample

import spatialdrop_onnx as sd
from spatialdrop_onnx.errors import UserError
from spatialdrop_onnx.graph import ScopesDisagree, check_acyclic, model_scopes, type_facts
from spatialdrop_onnx.passes import rewrite_engine
from spatialdrop_onnx.passes.monte_carlo.source import prepare
from spatialdrop_onnx.passes.rewrite_engine import RewriteEngine

X = sample((2, 4, 3, 5))


def _model(switch: str, default: str, reads: str) -> onnx.ModelProto:
    """Dropouts in a model-local function and in an If body, reading ``reads``.

    ``switch`` declares the input ``training_mode`` (``"shapeless <type>"``: no shape),
    ``default`` is its initializer. The function's input is named ``training_mode``,
    as rewrite threads the switch.
    """
    shapeless = switch.startswith("shapeless ")
    declared = switch.removeprefix("shapeless ")
    model = parse(f"""<ir_version: 8, opset_import: ["": 17, "local": 1]>
        g (float[2,4,3,5] x, bool c, {declared} training_mode)
            => (float[2,4,3,5] y, float[2,4,3,5] z) <float r = {{0.5}}, {default}> {{
            on = Constant<value = bool {{1}}>()
            y = local.F(x, {reads})
            z = If(c) <then_branch = g1 () => (float[2,4,3,5] z1) {{
                            z1 = Dropout(x, r, {reads})
                        }}, else_branch = g2 () => (float[2,4,3,5] z2) {{
                            z2 = Identity(x)
                        }}>
        }}
        <domain: "local", opset_import: ["": 17]>
        F (a, training_mode) => (b) {{
            half = Constant<value = float {{0.5}}>()
            b = Dropout(a, half, training_mode)
        }}""")
    full_check(model)
    if shapeless:  # the checker wants shapes on graph inputs; onnxruntime does not
        _input(model).type.tensor_type.ClearField("shape")
    return model


def _input(model: onnx.ModelProto) -> onnx.ValueInfoProto | None:
    return next((i for i in model.graph.input if i.name == "training_mode"), None)


def _default(model: onnx.ModelProto) -> onnx.TensorProto | None:
    return next((i for i in model.graph.initializer if i.name == "training_mode"), None)


FOREIGN = [("float", "float training_mode = {0.5}"),
           ("shapeless float", "float training_mode = {0.5}"),
           ("bool[2]", "bool[2] training_mode = {0, 1}")]


@pytest.mark.parametrize(("switch", "default"), FOREIGN, ids=[s for s, _ in FOREIGN])
def test_a_foreign_training_mode_is_left_alone_by_every_pass(switch: str, default: str) -> None:
    """A ``training_mode`` input that is not a boolean scalar is the model's own value:
    strip keeps it, mc keeps it as an input, inline keeps its default (rewrite, which
    would have to add the switch next to it, refuses)."""
    source = _model(switch, default, reads="on")
    given, given_default = _input(source), _default(source)

    stripped = sd.strip(source).model
    assert (_input(stripped), _default(stripped)) == (given, given_default)
    assert_same(run(stripped, {"x": X, "c": flag(True)}), [X, X])

    prepared = prepare(source)
    assert not prepared.had_switch
    assert given in prepared.inputs and _default(prepared.model) == given_default
    assert "training_mode" not in {n.output[0] for n in prepared.model.graph.node}

    inlined = sd.inline(source)
    assert inlined.report.switch_default is None
    assert (_input(inlined.model), _default(inlined.model)) == (given, given_default)

    with pytest.raises(UserError, match="not a boolean scalar"):
        sd.rewrite(source)


@pytest.mark.parametrize("switch", ["bool", "shapeless bool"])
def test_the_switch_read_in_a_function_and_a_subgraph_is_one_switch(switch: str) -> None:
    """The switch, read inside a function (through the call) and an If body: strip removes
    it everywhere, mc turns it on, inline takes its default; the same for both types."""
    source = _model(switch, "bool training_mode = {0}", reads="training_mode")
    feeds = {"x": X, "c": flag(True)}

    stripped = sd.strip(source).model
    full_check(stripped)  # the switch, shapeless or not, is gone
    assert _input(stripped) is None and _default(stripped) is None
    assert [list(f.input) for f in stripped.functions] == [["a"]]
    assert_same(run(stripped, feeds), [X, X])

    prepared = prepare(source)
    assert prepared.had_switch and "training_mode" not in {i.name for i in prepared.inputs}
    assert _default(prepared.model) is None
    on = next(n for n in prepared.model.graph.node if n.output[0] == "training_mode")
    assert on.op_type == "Constant" and onnx.numpy_helper.to_array(on.attribute[0].t)
    # Both Dropouts read the switch (one through the call): both now train.
    assert (prepared.dropout_converted, prepared.random_sites) == (2, 2)

    inlined = sd.inline(source)
    assert inlined.report.switch_default is False
    assert _input(inlined.model) == _input(source) and _default(inlined.model) is None


def test_rewrite_reuses_a_shapeless_boolean_switch() -> None:
    """Rewrite takes a boolean ``training_mode`` of undeclared shape for the switch, as
    strip, mc and inline do (it used to refuse it as not a boolean scalar)."""
    source = parse("""<ir_version: 8, opset_import: ["": 18]>
        g (float[2,4,3,5] x, bool training_mode) => (float[2,4,3,5] y)
            <float r = {0.25}, float s = {1.3333333333}> {
            u = RandomUniform<shape = [2, 4, 1, 1]>()
            keep = GreaterOrEqual(u, r)
            m = Cast<to = 1>(keep)
            ms = Mul(m, s)
            y = Mul(x, ms)
        }""")
    _input(source).type.tensor_type.ClearField("shape")
    rewritten = sd.rewrite(source).model
    assert [i.name for i in rewritten.graph.input] == ["x", "training_mode"]
    assert _input(rewritten) == _input(source)
    assert onnx.numpy_helper.to_array(_default(rewritten)).item() is False
    assert_same(run(rewritten, {"x": X}), [X])
    assert not np.array_equal(run(rewritten, {"x": X, "training_mode": flag(True)})[0], X)


# --- Scopes ---------------------------------------------------------------------------

NESTED = """<ir_version: 8, opset_import: ["": 17, "local": 1]>
    g (float[2,4,3,5] x, bool c) => (float[2,4,3,5] y, float[2,4,3,5] v, float[2,4,3,5] w) {
        y = If(c) <then_branch = g1 () => (float[2,4,3,5] y1) {
                        y1 = If(c) <then_branch = g3 () => (float[2,4,3,5] y3) {
                                        y3 = Relu(x) },
                                    else_branch = g4 () => (float[2,4,3,5] y4) {
                                        y4 = Neg(x) }>
                    }, else_branch = g2 () => (float[2,4,3,5] y2) { y2 = Identity(x) }>
        v = If(c) <then_branch = g5 () => (float[2,4,3,5] v1) { v1 = Relu(x) },
                   else_branch = g6 () => (float[2,4,3,5] v2) { v2 = Neg(x) }>
        w = local.F(x, c)
    }
    <domain: "local", opset_import: ["": 17]>
    F (a, k) => (b) {
        b = If(k) <then_branch = f1 () => (float[2,4,3,5] b1) { b1 = Relu(a) },
                   else_branch = f2 () => (float[2,4,3,5] b2) { b2 = Identity(a) }>
    }"""


def _engine(model: onnx.ModelProto) -> RewriteEngine:
    return RewriteEngine(ir.serde.deserialize_model(model), model, elementwise="dropout",
                         facts=type_facts(model))


def test_both_walks_key_and_name_every_scope_the_same() -> None:
    """Nested Ifs (unnamed: their paths repeat) and a function's If: the onnx_ir walk gives
    each scope the key and path the protobuf walk gives it, parents first, keys unique."""
    model = parse(NESTED)
    engine = _engine(model)
    theirs = [(engine.keys[id(scope)], path) for scope, path in engine.scopes]
    ours = [(s.key, s.path) for s in model_scopes(model)]
    assert theirs == ours
    assert len(ours) == 10 and len({key for key, _ in ours}) == 10
    assert len({path for _, path in ours}) == 8  # the paths alone could not pair them
    assert ("main/If/then_branch/If/else_branch" in {path for _, path in ours})


def test_walks_that_disagree_fail_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    """A protobuf walk that misses a scope the onnx_ir walk found is an internal error, not
    a rewrite that silently goes on without any type fact."""
    model = parse(NESTED)
    walk = rewrite_engine.model_scopes
    monkeypatch.setattr(rewrite_engine, "model_scopes", lambda m, **k: walk(m, **k)[:-1])
    with pytest.raises(ScopesDisagree, match="different scopes"):
        _engine(model)


def test_an_onnx_ir_walk_that_misses_a_subgraph_fails_loudly(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The onnx_ir side labels subgraphs from their nodes: one it cannot place is an error."""
    monkeypatch.setattr(rewrite_engine, "_subgraphs", lambda node: iter(()))
    with pytest.raises(ScopesDisagree):
        _engine(parse(NESTED))


def test_a_cycle_in_a_function_body_subgraph_is_found_and_named() -> None:
    """The cycle check walks the same scopes (function subgraphs included) and names the
    scope by its path."""
    model = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["": 17, "local": 1]>
        g (float[2] x, bool c) => (float[2] w) { w = local.F(x, c) }
        <domain: "local", opset_import: ["": 17]>
        F (a, k) => (b) {
            b = If(k) <then_branch = f1 () => (float[2] b1) { p = Add(q, a)  q = Relu(p)
                                                                b1 = Identity(q) },
                       else_branch = f2 () => (float[2] b2) { b2 = Identity(a) }>
        }""")
    with pytest.raises(UserError, match=r"dependency cycle in function local\.F/If/then_branch"):
        check_acyclic(model)
