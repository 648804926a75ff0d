"""Reports become strict JSON one way (reports.JsonReport): fields by name, sites by their
own rule, enums as values, tuples as lists."""

from __future__ import annotations

import json
import math
from dataclasses import fields

from spatialdrop_onnx.passes.rewrite_pass import RewriteReport
from spatialdrop_onnx.passes.strip_pass import StripReport
from spatialdrop_onnx.sites import Kind, Site


def test_reports_are_their_fields_with_sites_by_their_own_rule() -> None:
    site = Site(name="d", kind=Kind.SPATIAL, graph="main", op_type="Dropout", ratio=math.nan,
                shared_axes=(2, 3), extra={"module": "block.drop"})
    report = RewriteReport(converted=(site,), rewired=(), unconvertible=(site,),
                           opset_converted_from=13)
    data = report.to_dict()
    assert list(data) == [f.name for f in fields(RewriteReport)]
    assert data["converted"] == [site.to_dict()]
    assert data["converted"][0]["ratio"] is None  # a NaN ratio is null, as Site says
    assert data["converted"][0]["shared_axes"] == [2, 3]
    assert data["converted"][0]["kind"] == "spatial"
    assert data["converted"][0]["module"] == "block.drop"
    json.dumps(data, allow_nan=False)  # strict JSON
    strip = StripReport(folded=2, random_subgraphs=1, unconvertible=(site,)).to_dict()
    assert strip == {"folded": 2, "random_subgraphs": 1, "unconvertible": [site.to_dict()]}
