"""Graphs whose nodes depend on their own outputs: refused in one line, never a hang.

Found by mutation fuzzing (seed 777): a random op rewired to read a value computed from
its own draw made ``inspect`` follow producers forever.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import onnx.parser
import pytest
from mutation_fuzz import GENERATED

import spatialdrop_onnx as sd
from spatialdrop_onnx.cli import main
from spatialdrop_onnx.errors import UserError
from spatialdrop_onnx.graph import check_acyclic

#: The fuzz's case: PyTorch dynamo's Dropout2d with the random op reading its own mask.
RANDOM_OP_READS_ITS_MASK = GENERATED["torch_dynamo"].replace("RandomUniformLike(z)",
                                                             "RandomUniformLike(keep)")
assert RANDOM_OP_READS_ITS_MASK != GENERATED["torch_dynamo"]

#: The cycle runs through an If body that reads an outer value computed from the If.
THROUGH_A_SUBGRAPH = """<ir_version: 8, opset_import: ["": 17]>
    g (float[2,3] x, bool c) => (float[2,3] y) {
        a = If(c) <then_branch = t () => (float[2,3] o) { o = Relu(b) },
                   else_branch = e () => (float[2,3] o2) { o2 = Identity(x) }>
        b = Neg(a)
        y = Relu(a)
    }"""

#: A cycle inside a model-local function body, around a random op.
IN_A_FUNCTION = """<ir_version: 8, opset_import: ["": 17, "local": 1]>
    g (float[2,3] x) => (float[2,3] y) {
        y = local.f(x)
    }
    <domain: "local", opset_import: ["": 17]>
    f (v) => (w) {
        u = RandomUniformLike(w)
        s = Add(v, u)
        w = Relu(s)
    }"""


@pytest.mark.parametrize("text", [RANDOM_OP_READS_ITS_MASK, THROUGH_A_SUBGRAPH, IN_A_FUNCTION],
                         ids=["random op", "subgraph", "function"])
def test_check_acyclic_finds_the_cycle(text: str) -> None:
    with pytest.raises(UserError, match="dependency cycle"):
        check_acyclic(onnx.parser.parse_model(text))


@pytest.mark.parametrize("text", [RANDOM_OP_READS_ITS_MASK, IN_A_FUNCTION],
                         ids=["random op", "function"])
def test_every_pass_that_follows_producers_refuses_a_cycle(text: str) -> None:
    """The rules (rewrite, inspect, strip of random sites), the MC model and inlining."""
    model = onnx.parser.parse_model(text)
    for run in (sd.inspect, sd.strip, sd.rewrite, sd.inline,
                lambda m: sd.monte_carlo(m, samples=2)):
        with pytest.raises(UserError, match="dependency cycle"):
            run(model)


@pytest.mark.parametrize("command", [["inspect"], ["strip", "-q"], ["rewrite", "-q"],
                                     ["inline"], ["mc", "--samples", "4"]])
def test_every_command_refuses_a_cycle_in_one_line(tmp_path: Path, command: list[str],
                                                   capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "cycle.onnx"
    onnx.save(onnx.parser.parse_model(RANDOM_OP_READS_ITS_MASK), path)
    out = tmp_path / "out.onnx"
    outputs = [] if command[0] == "inspect" else ["-o", str(out)]
    assert main([command[0], str(path), *outputs, *command[1:]]) == 3
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "dependency cycle" in err and str(path) in err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["cycle.onnx"]


def test_nodes_out_of_order_are_not_a_cycle() -> None:
    """ONNX wants topological order; a graph merely listed out of order is still accepted."""
    model = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["": 17]>
        g (float[2,3] x) => (float[2,3] y) {
            y = Relu(a)
            a = Neg(x)
        }""")
    check_acyclic(model)
    assert sd.inspect(model) == []
