"""Keep torch's exporter chatter that says nothing about the user's model off their terminal.

Measured with torch 2.13 (every export printed these, whatever the model):

- the dynamo exporter logs ``torchvision is not installed. Skipping torchvision::nms``
  (and ``roi_align``, ``roi_pool``, ``deform_conv2d``) through the logger
  ``torch.onnx._internal.exporter._registration`` while it builds its op registry;
- ``torch.export`` copies tree specs, which raises the ``FutureWarning``
  ``isinstance(treespec, LeafSpec) is deprecated`` from torch's own code;
- the TorchScript exporter prints the C++ warning ``Custom opset domain:
  'org.spatialdrop' provided is not used in the model`` to the process's stderr
  (no Python warning to filter) for every model without channel dropout: the
  export does not pass ``custom_opsets`` at all and sets our domain's version
  afterwards (:func:`set_domain_version`);
- the TorchScript tracer's ``TracerWarning`` ("Converting a tensor to a Python
  boolean might cause the trace to be incorrect") raised inside torch's own
  ``torch.nn.functional`` (``nn.MultiheadAttention``'s shape checks, every
  trace) and inside this package (the explicit attention's head count): sizes
  that are static. A ``TracerWarning`` from the user's code still shows.

Only these exact messages are dropped; every other warning and log record passes.

An export attempt that may be thrown away (modules traced with their own
training flag on, which may fail or be redone in eval form) runs under
:func:`held_output`: torch's words about an attempt that is discarded (a graph
dump at a failed trace, tracer warnings) never reach the user, and those of an
attempt that is kept are released as they were.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

import onnx
import torch

#: The logger the dynamo exporter's op registry writes the torchvision lines with.
REGISTRY_LOGGER = "torch.onnx._internal.exporter._registration"


class _DropTorchvisionNotice(logging.Filter):
    """Drops "torchvision is not installed. Skipping torchvision::…" records."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("torchvision is not installed")


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
    """While the block runs, drop the notices listed in the module docstring."""
    logger = logging.getLogger(REGISTRY_LOGGER)
    notice = _DropTorchvisionNotice()
    logger.addFilter(notice)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)",
                                    category=FutureWarning)
            for module in (r"torch\.nn\.functional", r"spatialdrop_onnx\.torch\."):
                warnings.filterwarnings("ignore", category=torch.jit.TracerWarning,
                                        module=module)
            yield
    finally:
        logger.removeFilter(notice)


def set_domain_version(model: onnx.ModelProto, domain: str, version: int) -> None:
    """The opset import of ``domain`` at ``version``, when the model imports it."""
    for opset in model.opset_import:
        if opset.domain == domain:
            opset.version = version


@dataclass
class Held:
    """What an attempt wrote while :func:`held_output` held it."""

    warnings: list[warnings.WarningMessage] = field(default_factory=list)
    records: list[logging.LogRecord] = field(default_factory=list)
    stdout: str = ""
    stderr: str = ""

    def release(self) -> None:
        """Write it all out as it would have been written."""
        for message in self.warnings:
            warnings.warn_explicit(message.message, message.category, message.filename,
                                   message.lineno, source=message.source)
        for record in self.records:
            logging.getLogger(record.name).handle(record)
        if self.stdout:
            sys.stdout.write(self.stdout)
            sys.stdout.flush()
        if self.stderr:
            sys.stderr.write(self.stderr)
            sys.stderr.flush()


class _Hold(logging.Filter):
    def __init__(self, held: Held) -> None:
        super().__init__()
        self.held = held

    def filter(self, record: logging.LogRecord) -> bool:
        self.held.records.append(record)
        return False


@contextlib.contextmanager
def held_output() -> Iterator[Held]:
    """Hold what the block writes: Python warnings, log records, stdout and stderr.

    The process's file descriptors 1 and 2 are redirected too, so that C++ prints
    (the TorchScript exporter's graph dump) are held as well. Nothing is written
    unless the caller calls :meth:`Held.release`.
    """
    held = Held()
    hold = _Hold(held)
    handlers = {h for logger in (logging.getLogger(), logging.getLogger("torch"))
                for h in logger.handlers}
    for handler in handlers:
        handler.addFilter(hold)
    sys.stdout.flush()
    sys.stderr.flush()
    saved: dict[int, int] = {}
    for fd in (1, 2):
        with contextlib.suppress(OSError):  # no such descriptor: nothing to hold there
            saved[fd] = os.dup(fd)
    files = {fd: tempfile.TemporaryFile() for fd in saved}
    text = {1: io.StringIO(), 2: io.StringIO()}
    try:
        for fd, file in files.items():
            os.dup2(file.fileno(), fd)
        with warnings.catch_warnings(record=True) as caught, \
                contextlib.redirect_stdout(text[1]), contextlib.redirect_stderr(text[2]):
            try:
                yield held
            finally:
                held.warnings.extend(caught)
    finally:
        for fd, file in files.items():
            os.dup2(saved[fd], fd)
            os.close(saved[fd])
            file.seek(0)
            text[fd].write(file.read().decode(errors="replace"))
            file.close()
        for handler in handlers:
            handler.removeFilter(hold)
        held.stdout, held.stderr = text[1].getvalue(), text[2].getvalue()
