"""The Python API takes what users pass and says clearly what it cannot take.

Every pass (and ``make_portable``) takes a ``ModelProto``, a ``str`` or an
``os.PathLike``; the package exposes its version, its typing marker and the
numpy reference; bad argument values raise ``ValueError``/``TypeError`` with a
message naming the argument; click's ``CliRunner`` can drive ``cli.app``.
"""

from __future__ import annotations

import importlib.metadata
import importlib.resources
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

import spatialdrop_onnx as sd

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "onnx" / "torch_dropout2d_dynamic.onnx"


@pytest.mark.parametrize("kind", ["proto", "str", "path"])
def test_every_pass_takes_a_proto_a_str_or_a_path(kind: str) -> None:
    source = {"proto": onnx.load(SHIPPED), "str": str(SHIPPED), "path": SHIPPED}[kind]
    rewritten, report = sd.rewrite(source)
    assert isinstance(rewritten, onnx.ModelProto) and len(report.converted) == 1
    stripped, strip_report = sd.strip(source)
    assert strip_report.random_subgraphs == 1
    assert not any(n.op_type == "RandomUniformLike" for n in stripped.graph.node)
    (site,) = sd.inspect(source)
    assert site.kind is sd.Kind.RANDOM_SUBGRAPH and site.shared_axes == (2, 3)
    assert site.to_dict()["shared_axes"] == [2, 3]


def test_make_portable_takes_a_path(tmp_path: Path) -> None:
    path = tmp_path / "rewritten.onnx"
    onnx.save(sd.rewrite(SHIPPED).model, path)
    for source in (path, str(path)):
        portable = sd.make_portable(source)
        assert any(f.domain == sd.DOMAIN for f in portable.functions)


@pytest.mark.parametrize(("call", "error", "fragment"), [
    (lambda: sd.rewrite(42), TypeError, "onnx.ModelProto or a path"),
    (lambda: sd.strip(b"bytes"), TypeError, "onnx.ModelProto or a path"),
    (lambda: sd.inspect(None), TypeError, "onnx.ModelProto or a path"),
    (lambda: sd.make_portable(3.5), TypeError, "make_portable takes"),
    (lambda: sd.rewrite(SHIPPED, elementwise="both"), ValueError, "elementwise must be one of"),
    (lambda: sd.rewrite(SHIPPED, training_default="yes"), TypeError, "training_default"),
])
def test_bad_arguments_raise_with_a_message(call, error, fragment) -> None:
    with pytest.raises(error, match=fragment):
        call()


def test_version_typing_marker_and_reference() -> None:
    assert sd.__version__ == importlib.metadata.version("spatialdrop-onnx")
    assert (importlib.resources.files("spatialdrop_onnx") / "py.typed").is_file()
    # The reference is reachable after a plain ``import spatialdrop_onnx``.
    data = np.ones((2, 3, 4), np.float32)
    out = sd.reference.spatial_dropout(data, ratio=0.5, training_mode=True, seed=1)
    assert out.shape == data.shape and set(np.unique(out)) <= {0.0, 2.0}


def test_click_cli_runner_drives_the_app(tmp_path: Path) -> None:
    """Commands are registered explicitly, so the group works without main()."""
    from spatialdrop_onnx.cli import app

    result = CliRunner().invoke(app, ["inspect", str(SHIPPED), "--json"])
    assert result.exit_code == 0, result.output
    assert '"random-subgraph"' in result.output
    assert set(app.commands) >= {"convert", "rewrite", "strip", "inspect", "bench", "inline",
                                 "mc"}
