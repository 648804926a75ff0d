"""Run onnx's C++ checks where a crash cannot take the process down (the CLI's choice).

onnx's C++ shape inference, checker and version converter can abort the whole
process (SIGABRT) on a malformed model: a 3-node model with an input dim of -1
and ``Slice(ends=INT_MAX)`` is enough. The CLI must answer such a file with one
line, so inside :func:`isolated_checks` (which the CLI enters for every command)
these calls run in a forked child: the child computes, pickles the result into a
pipe and exits; a child killed by a signal, or still running after the timeout
(it is then killed), becomes a :class:`~spatialdrop_onnx.errors.UserError`.

Library calls run them in-process unless the caller opts in with
``with spatialdrop_onnx.isolated_checks():`` — forking is a change to the
caller's process (its threads, its signal handlers, its memory accounting) that
a library must not make unasked. Where ``fork`` is unavailable, calls run
in-process.

Forking copies nothing up front (copy-on-write) and re-imports nothing, so the
cost is a few milliseconds plus moving the (small) result through the pipe.
"""

from __future__ import annotations

import gc
import os
import pickle
import select
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from .errors import UsageError, UserError, printable

_R = TypeVar("_R")
_HAS_FORK = hasattr(os, "fork") and sys.platform != "win32"
#: Set to run every isolated call in-process (debugging; a crash then kills the caller).
_DISABLE_ENV = "SPATIALDROP_ONNX_NO_ISOLATION"


#: How long an isolated call may run before its child is killed (seconds); the CLI's
#: default, overridable with SPATIALDROP_ONNX_CHECK_TIMEOUT. Shape inference of a
#: 1,000,000-node model takes tens of seconds here; a deadlocked child takes forever.
DEFAULT_TIMEOUT = 900.0
_TIMEOUT_ENV = "SPATIALDROP_ONNX_CHECK_TIMEOUT"

#: The timeout of the innermost isolated_checks() block; None: not isolating.
_isolating: float | None = None
_in_child = False
#: What a child must not free before it exits (see run_isolated).
_kept_in_child: list[object] = []


@contextmanager
def isolated_checks(timeout: float | None = None) -> Iterator[None]:
    """Inside the block, onnx's C++ checks run in a forked child, killed after
    ``timeout`` seconds (default :data:`DEFAULT_TIMEOUT`, or the environment's
    ``SPATIALDROP_ONNX_CHECK_TIMEOUT``)."""
    global _isolating
    if timeout is None:
        setting = os.environ.get(_TIMEOUT_ENV) or str(DEFAULT_TIMEOUT)
        try:
            timeout = float(setting)
        except ValueError:
            timeout = float("nan")
        if not timeout > 0:  # NaN too
            raise UsageError(f"{_TIMEOUT_ENV} must be a number of seconds > 0, "
                             f"got {printable(setting)}")
    elif not timeout > 0:
        raise ValueError(f"isolated_checks: timeout must be > 0, got {timeout}")
    outer, _isolating = _isolating, timeout
    try:
        yield
    finally:
        _isolating = outer


def in_forked_child() -> bool:
    """True inside a ``run_isolated`` child: it may change its arguments freely."""
    return _in_child


class _ChildFailed(Exception):
    """The child raised: its exception type name and message travel back as text."""


def run_isolated(fn: Callable[..., _R], *args: object, what: str) -> _R:
    """``fn(*args)``, in a forked child inside :func:`isolated_checks`; exceptions it
    raises are re-raised here.

    ``what`` says what was being done, for the message when the child crashes
    ("onnx crashed (SIGABRT) while inferring shapes: the model is malformed").
    The result must be picklable.
    """
    global _in_child
    timeout = _isolating
    if timeout is None or _in_child or not _HAS_FORK or os.environ.get(_DISABLE_ENV):
        return fn(*args)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: compute, report, leave without running any cleanup
        # The child has one thread; objects it inherited may own others' locks (an
        # onnxruntime session's thread pool): a finalizer run here can wait forever on a
        # condition variable whose waiter stayed in the parent. No cyclic collection,
        # and nothing the computation raised is freed before _exit.
        gc.disable()
        os.close(read_fd)
        _in_child = True
        _silence_stderr()  # a C++ assertion message would be a second, unasked-for line
        code = 0
        try:
            try:
                payload = pickle.dumps(("ok", fn(*args)), protocol=pickle.HIGHEST_PROTOCOL)
            except BaseException as err:  # noqa: BLE001 - everything goes back to the parent
                _kept_in_child.append(err)  # its traceback's frames are never freed
                try:
                    payload = pickle.dumps(("error", err), protocol=pickle.HIGHEST_PROTOCOL)
                except Exception:  # noqa: BLE001 - an unpicklable exception: send its text
                    payload = pickle.dumps(("error", _ChildFailed(
                        f"{type(err).__name__}: {err}")))
            with os.fdopen(write_fd, "wb") as pipe:
                pipe.write(payload)
        except BaseException:  # noqa: BLE001 - never return into the parent's code
            code = 1
        finally:
            os._exit(code)
    os.close(write_fd)
    try:
        payload = _read_until(read_fd, time.monotonic() + timeout)
    except TimeoutError:
        os.kill(pid, signal.SIGKILL)
        _wait(pid)
        raise UserError(f"onnx did not finish {what} within {timeout:g} s (the child was "
                        f"stopped; {_TIMEOUT_ENV} sets the limit)") from None
    except BaseException:
        os.kill(pid, signal.SIGKILL)  # interrupted: the child must not outlive us
        _wait(pid)
        raise
    finally:
        os.close(read_fd)
    _, status = _wait(pid)
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        raise UserError(f"onnx crashed ({name}) while {what}: the model is malformed")
    if not payload:
        raise UserError(f"onnx failed while {what} (exit status {os.WEXITSTATUS(status)})")
    kind, value = pickle.loads(payload)  # noqa: S301 - our own child's bytes
    if kind == "error":
        raise value
    return value


def _read_until(fd: int, deadline: float) -> bytes:
    """Everything the child writes to ``fd`` until it closes it; TimeoutError past ``deadline``."""
    chunks = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _silence_stderr() -> None:
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 2)
        os.close(null)
    except OSError:
        pass


def _wait(pid: int) -> tuple[int, int]:
    while True:
        try:
            return os.waitpid(pid, 0)
        except InterruptedError:
            continue


def _first_complaint(model: object) -> str:
    import onnx

    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as err:  # noqa: BLE001 - any complaint is the answer
        text = str(err).strip()
        return text.splitlines()[0] if text else type(err).__name__
    return ""


def checker_complaint(model: object) -> str:
    """The full onnx checker's first complaint about ``model`` (a ModelProto), "" if none.

    Runs isolated: a checker that crashes on the model is a complaint too.
    """
    try:
        return run_isolated(_first_complaint, model, what="checking the model")
    except Exception as err:  # noqa: BLE001 - a crash of the checker is an answer too
        text = str(err).strip()
        return text.splitlines()[0] if text else type(err).__name__
