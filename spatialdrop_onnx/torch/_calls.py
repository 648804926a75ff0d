"""torch's dropout functions, and the function mode that runs them the way an export needs.

Model zoos write head dropout as ``F.dropout(x, p, training=self.training)`` in a
``forward``; ``nn.Dropout*`` modules do the same with their own flag. Exporting
a model in eval mode turns every such call into the identity. :class:`DropoutMode`
(a ``TorchFunctionMode``) sees each call, whatever name it was reached by
(``F.x``, ``torch.x``, a name bound at import time, an in-place variant) and:

- runs it in training mode when it was gated off (``forced``), so its random
  mask reaches the exported graph;
- runs alpha dropout in eval mode (``refused``): it has no channel-wise
  equivalent, and a random op no rule converts would make every inference run
  random;
- computes ``F.scaled_dot_product_attention`` with ``dropout_p > 0`` explicitly
  (:func:`explicit_attention`: softmax, element-wise ``F.dropout`` of the
  attention probabilities, matmul), because every exporter writes the fused op
  without its dropout; ``F.multi_head_attention_forward`` in training with
  ``need_weights=False`` (``nn.MultiheadAttention``, ``nn.Transformer*``) is
  run on its explicit path (``need_weights=True``, weights discarded), which
  calls ``F.dropout`` itself (``attention``).

:class:`ModuleTracker` keeps the stack of running modules (forward hooks), so
each call is recorded with the qualified name of the module whose ``forward``
made it.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import inspect
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from ..reports import JsonReport


class Family(enum.Enum):
    """What a dropout function drops."""

    ELEMENTWISE = "elementwise"
    CHANNEL = "channel"
    ALPHA = "alpha"


@dataclass(frozen=True)
class DropoutFunction:
    """One of torch's dropout functions: its reported name and how to read its arguments."""

    name: str
    family: Family
    #: Parameter names in positional order, ``input`` first.
    params: tuple[str, ...]
    defaults: Mapping[str, Any] = field(default_factory=dict)

    @property
    def training_param(self) -> str:
        """``training`` for ``torch.nn.functional``, ``train`` for the ``torch.*`` builtins."""
        return self.params[2]

    def bind(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """Every argument by name, defaults filled in."""
        values = dict(self.defaults)
        values.update(zip(self.params, args, strict=False))
        values.update(kwargs)
        return values


@functools.cache
def dropout_functions() -> dict[Callable[..., Any], DropoutFunction]:
    """torch's dropout functions by function object (``torch.dropout`` is the C builtin itself)."""
    functional = torch.nn.functional
    table: dict[Callable[..., Any], DropoutFunction] = {}
    for name, family in (("dropout", Family.ELEMENTWISE), ("dropout1d", Family.CHANNEL),
                         ("dropout2d", Family.CHANNEL), ("dropout3d", Family.CHANNEL),
                         ("alpha_dropout", Family.ALPHA),
                         ("feature_alpha_dropout", Family.ALPHA)):
        function = getattr(functional, name)
        parameters = inspect.signature(function).parameters
        defaults = {key: p.default for key, p in parameters.items()
                    if p.default is not inspect.Parameter.empty}
        table[function] = DropoutFunction(f"F.{name}", family, tuple(parameters), defaults)
    for base, family in (("dropout", Family.ELEMENTWISE), ("feature_dropout", Family.CHANNEL),
                         ("alpha_dropout", Family.ALPHA),
                         ("feature_alpha_dropout", Family.ALPHA)):
        for name in (base, base + "_"):
            table[getattr(torch, name)] = DropoutFunction(f"torch.{name}", family,
                                                          ("input", "p", "train"))
    return table


#: ``F.scaled_dot_product_attention``'s parameters in positional order, with defaults
#: (a C builtin: ``inspect.signature`` cannot read it). ``enable_gqa`` exists since torch 2.5.
SDPA_PARAMS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale",
               "enable_gqa")
SDPA_DEFAULTS: Mapping[str, Any] = {"attn_mask": None, "dropout_p": 0.0, "is_causal": False,
                                    "scale": None, "enable_gqa": False}


def explicit_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                       attn_mask: torch.Tensor | None = None, dropout_p: float = 0.0,
                       is_causal: bool = False, scale: float | None = None,
                       enable_gqa: bool = False) -> torch.Tensor:
    """``F.scaled_dot_product_attention`` as ops an exporter writes, dropout included.

    As torch defines it: scores ``q @ kᵀ · scale`` (default ``1/√E``), a causal
    mask aligned top-left (``tril`` of an (L, S) matrix of ones), a boolean
    ``attn_mask`` (true: take part) or a float one (added), softmax (a row
    with every score masked gives zeros, as torch's ``_safe_softmax``), then
    ``F.dropout(p, training=True)`` on the probabilities, then ``@ v``.
    ``enable_gqa`` repeats each key/value head for its group of query heads.
    With the dropout off it equals torch's fused op (float rounding aside).
    """
    if is_causal and attn_mask is not None:
        raise RuntimeError("scaled_dot_product_attention: attn_mask and is_causal cannot "
                           "both be set")  # as torch's own check
    length, source = query.size(-2), key.size(-2)
    # ``size ** -0.5``, not math.sqrt: under the TorchScript tracer the size is a
    # traced value, and converting it to a Python float would warn and freeze it.
    factor = query.size(-1) ** -0.5 if scale is None else scale
    if enable_gqa and key.dim() >= 3 and key.size(-3) != query.size(-3):
        groups = query.size(-3) // key.size(-3)
        key = key.repeat_interleave(groups, dim=-3)
        value = value.repeat_interleave(groups, dim=-3)
    scores = torch.matmul(query, key.transpose(-2, -1)) * factor
    mask = attn_mask
    if is_causal:
        mask = torch.ones(length, source, dtype=torch.bool, device=query.device).tril()
    if mask is not None:
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(mask.logical_not(), float("-inf"))
        else:
            scores = scores + mask
    probabilities = torch.softmax(scores, dim=-1)
    if attn_mask is not None:  # a causal mask never masks a whole row
        masked = (scores == float("-inf")).all(dim=-1, keepdim=True)
        probabilities = probabilities.masked_fill(masked, 0.0)
    if dropout_p > 0.0:
        probabilities = torch.nn.functional.dropout(probabilities, dropout_p, True)
    return torch.matmul(probabilities, value)


@functools.cache
def _attention_functions() -> tuple[Callable[..., Any], Callable[..., Any], inspect.Signature]:
    functional = torch.nn.functional
    return (functional.scaled_dot_product_attention, functional.multi_head_attention_forward,
            inspect.signature(functional.multi_head_attention_forward))


@dataclass(frozen=True)
class DropoutCall(JsonReport):
    """One call of a torch dropout function, and the module whose ``forward`` made it."""

    #: Qualified name of the module (``""`` is the root, ``"blocks.0.drop"`` a submodule).
    module: str
    module_type: str
    #: How the call was reached: ``F.dropout2d``, ``torch.feature_dropout``, ...
    function: str
    p: float


class ModuleTracker:
    """The module running right now, from forward pre/post hooks on every submodule.

    A module shared under several names is known by its first name; code that
    calls a submodule's ``forward`` directly (not through ``__call__``) is
    attributed to its caller.
    """

    def __init__(self, root: torch.nn.Module) -> None:
        self._root = root
        self._stack: list[tuple[str, str]] = []

    @property
    def current(self) -> tuple[str, str]:
        """``(qualified name, class name)`` of the innermost running module."""
        return self._stack[-1] if self._stack else ("", type(self._root).__name__)

    @contextlib.contextmanager
    def attached(self) -> Iterator[ModuleTracker]:
        """Hooks on every submodule while the block runs."""
        handles = []

        def push(name: str, module: torch.nn.Module) -> None:
            self._stack.append((name, type(module).__name__))

        def pop() -> None:
            if self._stack:
                self._stack.pop()

        try:
            for name, module in self._root.named_modules():
                # A hook's return value would replace the arguments or the output.
                handles.append(module.register_forward_pre_hook(
                    lambda m, _args, name=name: push(name, m)))
                handles.append(module.register_forward_hook(
                    lambda _m, _args, _out: pop(), always_call=True))
            yield self
        finally:
            for handle in handles:
                handle.remove()
            self._stack.clear()


@dataclass(frozen=True)
class Policy:
    """What :class:`DropoutMode` does with the dropout calls it sees.

    ``force``: run calls whose training flag is off in training mode, except in
    the modules named in ``skip`` (qualified names). Alpha dropout always runs
    in eval mode.
    """

    force: bool
    skip: frozenset[str] = frozenset()


class DropoutMode(TorchFunctionMode):
    """Runs torch's dropout calls by a :class:`Policy`; records forced and refused calls.

    Inside ``__torch_function__`` torch disables the mode, so a function that
    calls another dropout function (``F.dropout2d`` calls
    ``torch.feature_dropout``) is seen once.
    """

    def __init__(self, tracker: ModuleTracker, policy: Policy) -> None:
        super().__init__()
        self.tracker = tracker
        self.policy = policy
        self.forced: list[DropoutCall] = []
        self.refused: list[DropoutCall] = []
        #: Attention calls with dropout, computed explicitly so that it is exported.
        self.attention: list[DropoutCall] = []

    def __torch_function__(self, func: Callable[..., Any], types: Any,  # noqa: ANN401
                           args: tuple[Any, ...] = (),
                           kwargs: Mapping[str, Any] | None = None) -> Any:  # noqa: ANN401
        kwargs = kwargs or {}
        spec = dropout_functions().get(func)
        if spec is None:
            return self._attention(func, args, kwargs)
        values = spec.bind(args, kwargs)
        key = spec.training_param
        if "p" not in values or key not in values or float(values["p"]) == 0.0:
            return func(*args, **kwargs)  # torch reports a bad call; p = 0 is the identity
        p = float(values["p"])
        path, type_name = self.tracker.current
        call = DropoutCall(path, type_name, spec.name, p)
        if spec.family is Family.ALPHA:
            self.refused.append(call)
            values[key] = False
        elif not values[key] and self.policy.force and path not in self.policy.skip:
            self.forced.append(call)
            values[key] = True
        return func(**values)

    def _attention(self, func: Callable[..., Any], args: tuple[Any, ...],
                   kwargs: Mapping[str, Any]) -> Any:  # noqa: ANN401
        """Attention with dropout on a path that exports it; anything else as it is."""
        sdpa, mha, mha_signature = _attention_functions()
        if func is sdpa:
            values = dict(SDPA_DEFAULTS)
            values.update(zip(SDPA_PARAMS, args, strict=False))
            values.update(kwargs)
            p = values["dropout_p"]
            if isinstance(p, (int, float)) and p > 0 and set(values) <= set(SDPA_PARAMS):
                self.attention.append(DropoutCall(*self.tracker.current,
                                                  "F.scaled_dot_product_attention", float(p)))
                return explicit_attention(**values)
        elif func is mha:
            try:
                bound = mha_signature.bind(*args, **kwargs)
            except TypeError:
                return func(*args, **kwargs)  # torch reports the bad call
            bound.apply_defaults()
            values = bound.arguments
            p = values["dropout_p"]
            if (values["training"] and not values["need_weights"]
                    and isinstance(p, (int, float)) and p > 0):
                # The fused path (need_weights=False) calls SDPA out of this mode's
                # sight; the explicit one applies F.dropout to the probabilities.
                self.attention.append(DropoutCall(*self.tracker.current,
                                                  "F.multi_head_attention_forward", float(p)))
                values["need_weights"] = True
                output, _ = func(**values)
                return output, None
        return func(*args, **kwargs)


class RandomOpCounter(TorchDispatchMode):
    """Counts random ATen ops (tagged ``nondeterministic_seeded``) by running module.

    Sees the ops every path reaches: dropout under ``if self.training:``, attention
    and RNN dropout, ``torch.rand`` in a custom drop-connect function.
    """

    def __init__(self, tracker: ModuleTracker) -> None:
        super().__init__()
        self.tracker = tracker
        self.counts: dict[tuple[str, str, str], int] = {}

    def __torch_dispatch__(self, func: Any, types: Any,  # noqa: ANN401
                           args: tuple[Any, ...] = (),
                           kwargs: Mapping[str, Any] | None = None) -> Any:  # noqa: ANN401
        if torch.Tag.nondeterministic_seeded in func.tags:
            key = (*self.tracker.current, func.overloadpacket.__name__)
            self.counts[key] = self.counts.get(key, 0) + 1
        return func(*args, **(kwargs or {}))
