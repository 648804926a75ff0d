"""``export``: a torch module to ONNX with its dropout kept, converted and switchable."""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import os
import warnings
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

import onnx
import torch

from ..errors import printable
from ..function_body import MIN_OPSET
from ..graph import is_onnx_dropout, iter_nodes
from ..passes import PassResult, inspect, rewrite
from ..reports import JsonReport
from ..sessions import ORT_DROPOUT_NOTE
from ..sites import Kind, Site
from ._calls import DropoutCall, Policy
from ._dynamo import export_dynamo
from ._quiet import held_output
from ._torchscript import export_torchscript
from ._tracing import Missed, audit, state_kept

#: Class names of modules whose randomness sits behind their own ``training`` flag
#: and converts to SpatialDropout (timm's ``DropPath``, torchvision's ``StochasticDepth``):
#: they are kept in train mode for the export.
STOCHASTIC_DEPTH_MODULES = frozenset({"DropPath", "StochasticDepth"})

ALPHA_REASON = ("alpha dropout keeps the mean and variance of SELU activations and has no "
                "SpatialDropout equivalent; exported in its eval form (identity)")
MISSED_REASON = ("random in module.train() but not reachable by the export, even with the "
                 "module's own training flag on (e.g. dropout inside a fused op such as an "
                 "RNN's, or randomness drawn for a submodule); exported in its eval form")
EVAL_FORM = "exported in its eval form"


@dataclass(frozen=True)
class LeftOut(JsonReport):
    """Dropout the export writes in its eval form (the identity), and why."""

    #: Qualified name of the module (``""`` is the root).
    module: str
    module_type: str
    #: The call (``F.alpha_dropout``), the module class, or the random ATen ops missed.
    what: str
    reason: str
    p: float | None = None


@dataclass(frozen=True)
class TrainedModule(JsonReport):
    """A module exported with its own training flag on, found by what it does.

    Its ``forward`` draws random numbers in ``train()`` that eval gates off
    (drop path of any class name, inline drop-connect, attention dropout written
    ``dropout_p=p if self.training else 0``, dropout under ``if self.training:``);
    each became a switchable site of the model. Its submodules keep their own flags.
    """

    #: Qualified name of the module (``""`` is the root).
    module: str
    module_type: str
    #: The attention calls whose dropout it now exports, else the random ATen ops it draws.
    what: str


@dataclass(frozen=True)
class TorchExportReport(JsonReport):
    """What :func:`export` did.

    ``sites``: every dropout site of the exported model (``Site`` as
    :func:`spatialdrop_onnx.inspect` gives them), with ``rule`` the rewrite rule
    that converted it (None: the exporter wrote it) and ``extra["module"]`` the
    owning module's qualified name when the exporter recorded it. ``forced``:
    the functional dropout calls gated off by a module's flag that were run in
    training mode. ``trained``: the modules exported with their own training
    flag on because they draw random masks in training (found by behaviour,
    whatever their class name). ``left_out``: dropout exported in its eval form,
    with the reason. ``notes``: how to run the model, and checks that could not run.
    """

    exporter: str
    sites: tuple[Site, ...] = ()
    forced: tuple[DropoutCall, ...] = ()
    trained: tuple[TrainedModule, ...] = ()
    left_out: tuple[LeftOut, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def unconvertible(self) -> tuple[Site, ...]:
        """Random ops of the model's own that no rule converts (random in eval too)."""
        return tuple(s for s in self.sites if s.kind is Kind.UNCONVERTIBLE)

    @property
    def complete(self) -> bool:
        """True when every dropout of the module is in the model, switchable."""
        return not self.left_out and not self.unconvertible


def export(module: torch.nn.Module, args: Sequence[Any] | torch.Tensor,
           path: str | os.PathLike | None = None, *, dynamo: bool = True,
           dynamic_batch: bool = True, training_default: bool = False, opset: int | None = None,
           train_modules: Collection[str] = STOCHASTIC_DEPTH_MODULES,
           ) -> PassResult[TorchExportReport]:
    """Export ``module`` to ONNX with its dropout kept, converted and switchable.

    Every module is exported in eval mode (BatchNorm in inference form) except
    the modules whose class name is in ``train_modules`` (stochastic depth).
    Functional dropout gated on a module's flag (``F.dropout``,
    ``F.dropout1d/2d/3d``, ``torch.dropout``, ``torch.feature_dropout``, their
    in-place forms, and ``nn.Dropout*`` modules, which call them) is run in
    training mode while tracing and recorded in ``report.forced``. Channel
    dropout becomes ``SpatialDropout``, element-wise dropout ONNX ``Dropout``,
    stochastic depth ``SpatialDropout`` sharing every axis but the batch (or
    every axis, torchvision's "batch" mode); all read one boolean input
    ``training_mode`` whose default is ``training_default``.

    Dropout gated on a module's own flag in its own ``forward`` is found by
    behaviour (running the module eagerly in ``train()`` and as exported, and
    comparing the random ops each module draws): drop path under any class name,
    inline drop-connect, ``F.scaled_dot_product_attention(dropout_p=p if
    self.training else 0)``, ``nn.MultiheadAttention(dropout=p)``, dropout under
    ``if self.training:``. Such a module is exported with its own flag on (its
    submodules keep theirs) and listed in ``report.trained``; attention with
    dropout is computed explicitly, so its dropout (on the attention
    probabilities) is exported as ONNX ``Dropout``.

    Dropout that cannot be converted is exported in its eval form and listed in
    ``report.left_out`` with the reason (with a warning): alpha dropout, a
    module whose training-mode mask no rule recognises or that does not reach
    the graph as dropout or makes the export fail, and randomness the export
    cannot reach. torch's own notices about the export are kept off stdout and
    stderr (docs/torch.md, "Quiet output").

    ``args`` are example inputs. ``dynamic_batch`` makes axis 0 of every tensor
    input one dynamic dimension (use a batch of at least 2). ``dynamo=False``
    uses the TorchScript exporter (with :func:`register_symbolics`). With
    ``path`` the model is also saved there atomically. The module's flags,
    buffers and torch's random state are left as they were. Not thread-safe
    (it installs hooks and torch function modes).
    """
    args = _check_arguments(module, args, dynamo, dynamic_batch, training_default, opset,
                            train_modules)
    if path is not None:
        from ..modelio import check_output_path

        check_output_path(path)  # before the slow work
    classes = frozenset(train_modules)
    train = frozenset(name for name, sub in module.named_modules()
                      if type(sub).__name__ in classes)
    exporter = export_dynamo if dynamo else export_torchscript
    with state_kept(module):
        found = audit(module, args, Policy(force=True), train=train)
        forced_paths = {call.module for call in found.forced}
        own = frozenset(m.module for m in found.trained)
        types = {name: type(sub).__name__ for name, sub in module.named_modules()}
        whats = {m.module: _what(m, found.attention) for m in found.trained}
        skip: set[str] = set()
        fallbacks: list[LeftOut] = []
        while True:
            pending = sorted(own - skip)
            # An attempt with modules in their own training mode may fail or be
            # redone: torch's words about it are held until it is kept.
            hold = held_output() if pending else contextlib.nullcontext(None)
            try:
                with hold as held:
                    raw = exporter(module, args, dynamic_batch=dynamic_batch, opset=opset,
                                   train=train, own=own, skip=frozenset(skip))
            except Exception as err:
                if not pending:
                    raise
                # E.g. a Python branch on a random draw (layer drop) is a data-dependent
                # guard for torch.export, and TorchScript refuses LSTM dropout: export
                # the failing modules in eval form. Which ones: each class on its own.
                failing = _failing(pending, err, types, lambda trial: exporter(
                    module, args, dynamic_batch=dynamic_batch, opset=opset, train=train,
                    own=own, skip=frozenset(skip | trial)))
                skip.update(failing)
                fallbacks += [LeftOut(m, types.get(m, ""), whats[m], f"{why}; {EVAL_FORM}")
                              for m, why in failing.items()]
                continue
            result = rewrite(raw, training_default=training_default)
            owners = _owners(raw)
            ours = {}
            for site in result.report.unconvertible:
                owner = owners.get(site.name)
                if owner is not None and owner not in skip and (
                        owner in train or owner in own or owner in forced_paths):
                    ours.setdefault(owner, f"its training-mode random ops could not be "
                                           f"converted ({site.reason or 'no rule matches'})")
            # A module traced with its own flag on must own a site of the result; if
            # not, its training form changed the graph some other way (a Python
            # branch on a random number traced as a constant), which eval undoes.
            owned = {owners.get(site.name) for site in inspect(result.model)}
            for name in sorted(own - skip - owned - set(ours)):
                ours[name] = ("its training-mode random ops did not reach the exported graph "
                              "as dropout")
            if not ours:
                if held is not None:
                    held.release()
                break
            # The rewrite cannot convert these modules' training-mode randomness:
            # export them in eval form instead and say so, rather than ship a
            # model that is random with training_mode false.
            skip.update(ours)
            fallbacks += _fallbacks(ours, train, whats, found.forced, types)
    rules = {site.name: site.rule for site in result.report.converted}
    sites = tuple(dataclasses.replace(site, rule=rules.get(site.name),
                                      extra={**site.extra, "module": owners.get(site.name)})
                  for site in inspect(result.model))
    report = TorchExportReport(
        exporter="dynamo" if dynamo else "torchscript",
        sites=sites,
        forced=tuple(call for call in found.forced if call.module not in skip),
        trained=tuple(TrainedModule(m.module, m.module_type, whats[m.module])
                      for m in found.trained if m.module not in skip),
        left_out=(tuple(LeftOut(c.module, c.module_type, c.function, ALPHA_REASON, c.p)
                        for c in found.refused)
                  + tuple(fallbacks) + tuple(_missed(m) for m in found.missed)),
        notes=_notes(result.model, found.problem))
    _warn(report)
    if path is not None:
        from ..modelio import save_model

        save_model(result.model, path)
    return PassResult(result.model, report)


def _check_arguments(module: object, args: object, dynamo: object, dynamic_batch: object,
                     training_default: object, opset: object, train_modules: Collection[str]
                     ) -> tuple[Any, ...]:
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, not {type(module).__name__}")
    if isinstance(args, torch.Tensor):
        args = (args,)
    if not isinstance(args, (tuple, list)):
        raise TypeError(f"args must be a tuple of example inputs, not {type(args).__name__}")
    for name, value in (("dynamo", dynamo), ("dynamic_batch", dynamic_batch),
                        ("training_default", training_default)):
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be a bool, not {type(value).__name__}")
    if opset is not None and (isinstance(opset, bool) or not isinstance(opset, int)):
        raise TypeError(f"opset must be an int or None, not {type(opset).__name__}")
    if isinstance(train_modules, str) or not all(isinstance(n, str) for n in train_modules):
        raise TypeError("train_modules must be a collection of class names (str)")
    if opset is not None and opset < MIN_OPSET:
        raise ValueError(f"opset must be at least {MIN_OPSET} (SpatialDropout's function body "
                         f"needs it), not {opset}")
    return tuple(args)


def _owners(model: onnx.ModelProto) -> dict[str, str]:
    """Node name → qualified name of the module the exporter recorded it in.

    The dynamo exporter writes ``pkg.torch.onnx.name_scopes``: the qualified name
    of each enclosing module, outermost first, then the FX node (``['', 'blocks',
    'blocks.0', 'blocks.0.drop', 'mul_3']``); the TorchScript exporter names nodes
    ``/blocks.0/drop/Mul``.
    """
    owners = {}
    for _, node in iter_nodes(model):
        scopes = next((p.value for p in node.metadata_props
                       if p.key == "pkg.torch.onnx.name_scopes"), None)
        if scopes is not None:
            try:
                parts = ast.literal_eval(scopes)
            except (ValueError, SyntaxError):
                continue
            if isinstance(parts, list) and len(parts) >= 2 and isinstance(parts[-2], str):
                owners[node.name] = parts[-2]
        elif node.name.startswith("/"):
            owners[node.name] = ".".join(node.name[1:].split("/")[:-1])
    return owners


def _failure(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return ("exporting it with its training flag on failed "
            f"({type(err).__name__}: {printable(text)})")


def _failing(pending: Sequence[str], err: BaseException, types: dict[str, str],
             attempt: Callable[[set[str]], object]) -> dict[str, str]:
    """The modules (of ``pending``) whose own training mode makes the export fail, and why.

    With one class of module pending, all of them (``err`` says why). With several,
    each class is tried alone (the others in eval form, ``attempt(skipped)``): the
    classes that fail are the answer, and all of them if none fails alone.
    """
    classes: dict[str, list[str]] = {}
    for name in pending:
        classes.setdefault(types.get(name, ""), []).append(name)
    if len(classes) > 1:
        failing: dict[str, str] = {}
        for members in classes.values():
            try:
                with held_output():
                    attempt(set(pending) - set(members))
            except Exception as own_err:  # noqa: BLE001 - the export's own failure
                failing.update(dict.fromkeys(members, _failure(own_err)))
        if failing:
            return failing
    return dict.fromkeys(pending, _failure(err))


def _fallbacks(owners: dict[str, str], train: frozenset[str], whats: dict[str, str],
               forced: Sequence[DropoutCall], types: dict[str, str]) -> list[LeftOut]:
    found = []
    for owner, why in owners.items():
        reason = f"{why}; {EVAL_FORM}"
        if owner in train:
            found.append(LeftOut(owner, types.get(owner, ""), types.get(owner, ""), reason))
        elif owner in whats:
            found.append(LeftOut(owner, types.get(owner, ""), whats[owner], reason))
        found += [LeftOut(c.module, c.module_type, c.function, reason, c.p)
                  for c in forced if c.module == owner]
    return found


def _ops(ops: Sequence[str]) -> str:
    """``bernoulli_ x2, rand``: random ATen ops, counted."""
    counts = Counter(ops)
    return ", ".join(f"{op} x{n}" if n > 1 else op for op, n in sorted(counts.items()))


def _what(module: Missed, attention: Sequence[DropoutCall]) -> str:
    """What a module traced with its own flag on draws: its attention calls, else its ops."""
    calls = sorted({c.function for c in attention if c.module == module.module})
    return ", ".join(calls) if calls else _ops(module.ops)


def _missed(missed: Missed) -> LeftOut:
    return LeftOut(missed.module, missed.module_type, _ops(missed.ops), MISSED_REASON)


def _notes(model: onnx.ModelProto, audit_problem: str | None) -> tuple[str, ...]:
    notes = []
    if audit_problem is not None:
        notes.append("randomness the export cannot reach was not looked for: running the "
                     f"module in train() failed ({printable(audit_problem)})")
    if any(is_onnx_dropout(node) for _, node in iter_nodes(model)):
        notes.append(ORT_DROPOUT_NOTE)
    return tuple(notes)


def _warn(report: TorchExportReport) -> None:
    lines = [f"{printable(x.module or '<root>')} ({x.what}): {x.reason}" for x in report.left_out]
    lines += [f"{printable(s.extra.get('module') or s.name)}: random op {s.op_type} left as it "
              f"is ({s.reason}); the model is random in eval too" for s in report.unconvertible]
    if lines:
        warnings.warn("spatialdrop_onnx.torch.export: not every dropout is switchable "
                      "(report.left_out, report.unconvertible):\n  " + "\n  ".join(lines),
                      UserWarning, stacklevel=3)

