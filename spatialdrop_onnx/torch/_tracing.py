"""How a module runs while it is exported or audited: flags, hooks, modes, and its state kept.

:func:`dropout_training` puts the module in eval mode except the modules in
``train`` (named stochastic depth classes, recursively) and ``own`` (their own
flag only) and runs the block under a :class:`~._calls.DropoutMode`. :func:`audit`
runs the module eagerly — as the export will see it, and fully in ``train()`` —
and finds the modules whose own ``forward`` draws random numbers in training
that the export would not have (drop path of any class name, inline
drop-connect, attention dropout written ``dropout_p=p if self.training else 0``,
dropout under ``if self.training:``). Those are the modules to export with
their own flag on; a third run checks that this reaches their randomness.
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
                     train: Collection[str] = (), own: Collection[str] = (),
                     full_train: bool = False) -> Iterator[DropoutMode]:
    """Eval mode except the modules named in ``train`` (or ``train()`` everywhere), under the mode.

    Modules in ``train`` are put in ``train()`` with their submodules; modules in
    ``own`` get their own flag only (a block's BatchNorm stays in eval while the
    block's drop-connect runs). Every module's flag is restored afterwards.
    """
    saved = [(m, m.training) for m in module.modules()]
    tracker = ModuleTracker(module)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    try:
        # nn.MultiheadAttention / nn.TransformerEncoderLayer in eval take a fused
        # fast path (no dropout calls) under no_grad only: the audit's no_grad runs
        # and the export must see the same calls.
        torch.backends.mha.set_fastpath_enabled(False)
        module.train(full_train)
        if not full_train:
            for name, sub in module.named_modules():
                if name in train:
                    sub.train()
            for name, sub in module.named_modules():
                if name in own:
                    sub.training = True
        mode = DropoutMode(tracker, policy)
        with tracker.attached(), mode:
            yield mode
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
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
    #: Modules to export with their own training flag on, and the random ops that brings.
    trained: tuple[Missed, ...] = ()
    #: Attention calls whose dropout the export computes explicitly.
    attention: tuple[DropoutCall, ...] = ()


@dataclass(frozen=True)
class _Run:
    counts: dict[tuple[str, str, str], int]
    forced: tuple[DropoutCall, ...]
    refused: tuple[DropoutCall, ...]
    attention: tuple[DropoutCall, ...]


def audit(module: torch.nn.Module, args: Sequence[Any], policy: Policy, *,
          train: Collection[str]) -> Audit:
    """Run ``module(*args)`` eagerly as the export will, then in ``train()``; compare.

    The first run gives the exact dropout calls (one record per call). Random
    ATen ops of the ``train()`` run that the first run lacks, counted per
    module, are what the export would miss. Each module that misses some is
    tried with its own flag on (a third run, the configuration the export
    uses): what it then reaches is ``trained``, what it still lacks ``missed``.
    Alpha dropout is refused in every run, so it shows up as refused, not as
    missed. Buffers and the random state are kept.
    """
    first = _count(module, args, policy, train=train, own=(), full_train=False)
    try:
        train_run = _count(module, args, Policy(force=False), train=(), own=(), full_train=True)
    except Exception as err:  # noqa: BLE001 - the module's own code runs in train()
        text = str(err).strip().splitlines()[0] if str(err).strip() else ""
        return Audit(first.forced, first.refused, (), f"{type(err).__name__}: {text}",
                     attention=first.attention)
    candidates = _missing(train_run.counts, first.counts)
    final, trained = first, ()
    if candidates:
        try:
            promoted = _count(module, args, policy, train=train,
                              own={path for path, _ in candidates}, full_train=False)
        except Exception:  # noqa: BLE001 - then the export leaves them in eval form
            promoted = None
        if promoted is not None:
            final = promoted
            reached = _missing(promoted.counts, first.counts)
            trained = tuple(Missed(path, type_name, tuple(reached[path, type_name]))
                            for path, type_name in candidates if (path, type_name) in reached)
    missed = tuple(Missed(path, type_name, tuple(ops))
                   for (path, type_name), ops in _missing(train_run.counts, final.counts).items())
    return Audit(final.forced, final.refused, missed, trained=trained,
                 attention=final.attention)


def _missing(more: dict[tuple[str, str, str], int], fewer: dict[tuple[str, str, str], int]
             ) -> dict[tuple[str, str], list[str]]:
    """Per (module, class): the random ops ``more`` counts beyond ``fewer``."""
    missing: dict[tuple[str, str], list[str]] = {}
    for key, count in more.items():
        extra = count - fewer.get(key, 0)
        if extra > 0:
            missing.setdefault(key[:2], []).extend([key[2]] * extra)
    return missing


def _count(module: torch.nn.Module, args: Sequence[Any], policy: Policy, *,
           train: Collection[str], own: Collection[str], full_train: bool) -> _Run:
    with state_kept(module), torch.no_grad(), \
            dropout_training(module, policy, train=train, own=own,
                             full_train=full_train) as mode:
        counter = RandomOpCounter(mode.tracker)
        with counter:
            module(*args)
    return _Run(counter.counts, tuple(mode.forced), tuple(mode.refused), tuple(mode.attention))
