"""Our domain in a model: its opset import, our function bodies."""

from __future__ import annotations

import onnx

from .. import spec
from .scopes import model_scopes


def import_our_domain(opset_imports) -> None:  # noqa: ANN001 - repeated OperatorSetIdProto
    """Add the SpatialDropout domain to these opset imports if it is missing."""
    if not any(o.domain == spec.DOMAIN for o in opset_imports):
        opset_imports.append(onnx.helper.make_opsetid(spec.DOMAIN, spec.OPSET_VERSION))


def drop_our_unused_functions(model: onnx.ModelProto) -> None:
    """Remove our function bodies nothing calls, then our opset imports if nothing uses them."""
    scopes = model_scopes(model)
    calls = {(n.domain, n.op_type, n.overload) for s in scopes for n in s.nodes}
    kept = [f for f in model.functions
            if f.domain != spec.DOMAIN or (f.domain, f.name, f.overload) in calls]
    if len(kept) != len(model.functions):
        del model.functions[:]
        model.functions.extend(kept)
    if any(n.domain == spec.DOMAIN for s in model_scopes(model, include_ours=True)
           for n in s.nodes):
        return
    for owner in [model, *model.functions]:
        kept_imports = [o for o in owner.opset_import if o.domain != spec.DOMAIN]
        if len(kept_imports) != len(owner.opset_import):
            del owner.opset_import[:]
            owner.opset_import.extend(kept_imports)
