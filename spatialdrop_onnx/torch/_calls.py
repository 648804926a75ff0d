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
  random.

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


@dataclass(frozen=True)
class DropoutCall:
    """One call of a torch dropout function, and the module whose ``forward`` made it."""

    #: Qualified name of the module (``""`` is the root, ``"blocks.0.drop"`` a submodule).
    module: str
    module_type: str
    #: How the call was reached: ``F.dropout2d``, ``torch.feature_dropout``, ...
    function: str
    p: float

    def to_dict(self) -> dict[str, Any]:
        return {"module": self.module, "module_type": self.module_type,
                "function": self.function, "p": self.p}


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

    def __torch_function__(self, func: Callable[..., Any], types: Any,  # noqa: ANN401
                           args: tuple[Any, ...] = (),
                           kwargs: Mapping[str, Any] | None = None) -> Any:  # noqa: ANN401
        kwargs = kwargs or {}
        spec = dropout_functions().get(func)
        if spec is None:
            return func(*args, **kwargs)
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
