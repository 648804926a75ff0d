"""How a module runs while it is exported or audited: flags, hooks, modes, and its state kept.

:func:`dropout_training` puts the module in eval mode except the modules in
``train`` (stochastic depth modules, whose randomness sits behind their own
flag) and runs the block under a :class:`~._calls.DropoutMode`. :func:`audit`
runs the module eagerly twice — as the export will see it, and fully in
``train()`` — and names the random ops the export would not have.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ._calls import DropoutCall, DropoutMode, ModuleTracker, Policy, RandomOpCounter


@contextlib.contextmanager
def dropout_training(module: torch.nn.Module, policy: Policy, *,
                     train: Collection[str] = (), full_train: bool = False
                     ) -> Iterator[DropoutMode]:
    """Eval mode except the modules named in ``train`` (or ``train()`` everywhere), under the mode.

    Every module's flag is restored afterwards.
    """
    saved = [(m, m.training) for m in module.modules()]
    tracker = ModuleTracker(module)
    try:
        module.train(full_train)
        if not full_train:
            for name, sub in module.named_modules():
                if name in train:
                    sub.train()
        mode = DropoutMode(tracker, policy)
        with tracker.attached(), mode:
            yield mode
    finally:
        for sub, training in saved:
            sub.training = training


@contextlib.contextmanager
def state_kept(module: torch.nn.Module) -> Iterator[None]:
    """Buffers (BatchNorm statistics) and the global random state as they were, afterwards."""
    buffers = [(b, b.detach().clone()) for b in module.buffers()]
    with torch.random.fork_rng():
        try:
            yield
        finally:
            with torch.no_grad():
                for buffer, value in buffers:
                    buffer.copy_(value)


@dataclass(frozen=True)
class Missed:
    """Random ops a module runs in ``train()`` that the export does not have."""

    module: str
    module_type: str
    ops: tuple[str, ...]


@dataclass(frozen=True)
class Audit:
    """What one eager run of the export's configuration saw, and what it misses."""

    forced: tuple[DropoutCall, ...]
    refused: tuple[DropoutCall, ...]
    missed: tuple[Missed, ...]
    #: Why ``missed`` could not be worked out (the ``train()`` run failed), else None.
    problem: str | None = None


def audit(module: torch.nn.Module, args: Sequence[Any], policy: Policy, *,
          train: Collection[str]) -> Audit:
    """Run ``module(*args)`` eagerly as the export will, then in ``train()``; compare.

    The first run gives the exact dropout calls (one record per call). Random
    ATen ops of the ``train()`` run that the first run lacks are missed
    randomness, counted per module. Alpha dropout is refused in both runs, so it
    shows up as refused, not as missed. Buffers and the random state are kept.
    """
    export_run, forced, refused = _count(module, args, policy, train=train, full_train=False)
    try:
        train_run, _, _ = _count(module, args, Policy(force=False), train=(), full_train=True)
    except Exception as err:  # noqa: BLE001 - the module's own code runs in train()
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        return Audit(forced, refused, (), f"{type(err).__name__}: {first}")
    missing: dict[tuple[str, str], list[str]] = {}
    for key, count in train_run.items():
        extra = count - export_run.get(key, 0)
        if extra > 0:
            missing.setdefault(key[:2], []).extend([key[2]] * extra)
    missed = tuple(Missed(path, type_name, tuple(ops))
                   for (path, type_name), ops in missing.items())
    return Audit(forced, refused, missed)


def _count(module: torch.nn.Module, args: Sequence[Any], policy: Policy, *,
           train: Collection[str], full_train: bool,
           ) -> tuple[dict[tuple[str, str, str], int], tuple[DropoutCall, ...],
                      tuple[DropoutCall, ...]]:
    with state_kept(module), torch.no_grad(), \
            dropout_training(module, policy, train=train, full_train=full_train) as mode:
        counter = RandomOpCounter(mode.tracker)
        with counter:
            module(*args)
    return counter.counts, tuple(mode.forced), tuple(mode.refused)
