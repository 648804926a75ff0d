"""The Keras -> ONNX ``convert`` pipeline and its report.

Steps (each a ``progress`` step, so the CLI can show the slow ones):

1. check the input path and its format *before* importing TensorFlow: ``.keras``
   archives load with ``safe_mode=True`` always; ``.h5``/``.hdf5`` files and
   SavedModel directories can run code when loaded and are refused unless the
   caller trusts them;
2. import TensorFlow/Keras/tf2onnx and the user's ``--import`` modules;
3. load the model and find its dropout-family layers (recursively);
4. trace with only those layers in training mode and convert with tf2onnx;
5. rewrite the exporter's dropout into SpatialDropout / ONNX Dropout / standard
   random ops with a ``training_mode`` input defaulting to false (``passes.rewrite``);
   a dropout layer the passes could not convert is traced again in inference
   mode and reported as such, never left silently wrong;
6. ``--strip``: fold every dropout away (``passes.strip``);
7. check: ``onnx.checker`` full check, no TensorFlow op left, and the model run
   in onnxruntime must reproduce Keras' inference output on a sample batch;
8. save atomically.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import os
import re
import time
import warnings
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from .. import spec
from ..errors import RefusedError, UsageError, UserError
from ..graph import iter_nodes
from ..modelio import check_output_path, save_model
from ..sessions import ORT_DROPOUT_NOTE
from ..sites import Site
from . import keras_trace as kt

#: Name of the boolean graph input the rewrite adds.
TRAINING_INPUT = "training_mode"
#: Largest accepted |ONNX - Keras| on the self-check batch, relative to max(1, |Keras|).
VERIFY_TOLERANCE = 1e-4
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"

ProgressStep = Callable[[str], AbstractContextManager]


@contextlib.contextmanager
def no_progress(label: str) -> Iterator[None]:
    """The default ``progress``: show nothing."""
    yield


@dataclass
class SiteReport:
    """How one Keras dropout layer ended up in the ONNX model."""

    path: str
    layer_class: str
    kind: str
    rate: float
    details: dict[str, Any]
    training: str
    """``kept`` (random in training mode), ``inference-only`` (identity: see ``note``)
    or ``none`` (the layer draws no random numbers, e.g. rate 0)."""
    converted_to: list[str] = field(default_factory=list)
    """ONNX nodes now implementing it, e.g. ``SpatialDropout(shared_axes=[1], ratio=0.2)``."""
    note: str = ""

    def describe(self) -> str:
        """One line for the text summary."""
        rate = f"stddev={self.rate:g}" if self.kind == kt.GAUSSIAN_NOISE else f"rate={self.rate:g}"
        if self.details.get("recurrent_dropout"):
            rate += f", recurrent={self.details['recurrent_dropout']:g}"
        head = f"{self.path} ({self.layer_class}, {rate})"
        if self.training == "kept":
            body = ", ".join(self.converted_to) or "random ops"
        elif self.training == "inference-only":
            body = "INFERENCE ONLY"
        else:
            body = "no randomness"
        return f"{head} -> {body}" + (f" ({self.note})" if self.note else "")


@dataclass
class ConversionReport:
    """What ``convert_keras`` did; ``to_dict`` is the ``--json`` report."""

    input: str
    output: str
    source_format: str
    opset: int
    strip: bool
    inputs: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    training_input: str | None = None
    sites: list[SiteReport] = field(default_factory=list)
    max_abs_diff_vs_keras: float | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    """Dropout the model does not keep in training mode (with the reason)."""
    notes: list[str] = field(default_factory=list)
    """How to run the model correctly (runtime caveats)."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable report."""
        data = asdict(self)
        data["sites"] = [asdict(s) for s in self.sites]
        return data

    def summary_lines(self) -> list[str]:
        """Human-readable summary."""
        lines = [f"converted {self.input} -> {self.output} (opset {self.opset}"
                 + (", stripped for inference)" if self.strip else ")")]
        kept = sum(s.training == "kept" for s in self.sites)
        lines.append(f"dropout sites: {len(self.sites)} found, {kept} random in training mode"
                     + ("" if self.strip else f" (input '{self.training_input}', default false)"))
        lines += [f"  {s.describe()}" for s in self.sites]
        if self.max_abs_diff_vs_keras is not None:
            lines.append(f"check: onnxruntime vs Keras inference, max abs diff "
                         f"{self.max_abs_diff_vs_keras:.2e}")
        lines += [f"warning: {w}" for w in self.warnings]
        lines += [f"note: {n}" for n in self.notes]
        return lines


# --- 1. Input checks (no TensorFlow needed) -----------------------------------------


def detect_format(path: Path) -> str:
    """``keras``, ``h5`` or ``savedmodel`` for ``path``; UserError for anything else."""
    if not path.exists():
        raise UserError(f"{path}: no such file or directory")
    if path.is_dir():
        if (path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file():
            return "savedmodel"
        raise UserError(f"{path}: is a directory but not a TensorFlow SavedModel "
                        "(expected a Keras 3 .keras file)")
    try:
        with path.open("rb") as handle:
            head = handle.read(8)
    except OSError as err:
        raise UserError(f"{path}: cannot read the file ({err.strerror})") from None
    if not head:
        raise UserError(f"{path}: file is empty")
    if path.suffix.lower() in (".h5", ".hdf5") or head == _HDF5_MAGIC:
        return "h5"
    if path.suffix.lower() != ".keras":
        raise UserError(f"{path}: not a Keras model file (expected a Keras 3 .keras archive; "
                        ".h5/.hdf5 files and SavedModel directories need --trust-model)")
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
    except (zipfile.BadZipFile, OSError):
        raise UserError(f"{path}: not a Keras .keras archive (not a zip file)") from None
    if "config.json" not in names:
        raise UserError(f"{path}: not a Keras .keras archive (no config.json inside)")
    return "keras"


def refuse_untrusted(path: Path, source_format: str, trust_model: bool) -> None:
    """Refuse formats that can execute code on load unless the user trusts the file."""
    if trust_model or source_format == "keras":
        return
    what = {"h5": "an HDF5 (.h5/.hdf5) model: Keras does not apply safe_mode to HDF5 files",
            "savedmodel": "a TensorFlow SavedModel: a SavedModel is a program"}[source_format]
    raise RefusedError(f"{path}: refusing to load {what}, and loading it can run arbitrary code; "
                    "re-save it as .keras, or pass --trust-model if you trust its source")


def check_opset(opset: int) -> int:
    """The default-domain opset, if the function body and tf2onnx both support it."""
    if not kt.MIN_OPSET <= opset <= kt.MAX_OPSET:
        raise UsageError(f"--opset {opset} is not supported: use {kt.MIN_OPSET}..{kt.MAX_OPSET} "
                        f"(the SpatialDropout function body needs >= {kt.MIN_OPSET}, "
                        f"tf2onnx knows up to {kt.MAX_OPSET})")
    return opset


# --- 2-3. Loading -------------------------------------------------------------------


def import_modules(names: Sequence[str]) -> None:
    """Import the user's modules so their registered Keras layers can be deserialized."""
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as err:  # noqa: BLE001 - any failure in user code is a user error
            raise UserError(f"--import {name}: cannot import the module "
                            f"({err.__class__.__name__}: {_first_line(err)})") from None


def _first_line(err: BaseException, limit: int = 240) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else err.__class__.__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _exception_chain(err: BaseException) -> list[BaseException]:
    """``err`` and its causes, outermost first (Keras wraps the real reason several times)."""
    chain = [err]
    while (nxt := chain[-1].__cause__ or chain[-1].__context__) is not None and nxt not in chain:
        chain.append(nxt)
    return chain


def _explain_load_error(path: Path, err: Exception) -> UserError:
    chain = _exception_chain(err)
    texts = [str(e) for e in chain]
    if any("safe_mode" in t for t in texts):
        return RefusedError(f"{path}: refused by Keras safe mode: the model holds Python code "
                         "(e.g. a Lambda layer) that would run when loaded; this tool always "
                         "loads .keras files with safe_mode=True")
    for text in reversed(texts):
        missing = re.search(r"Could not locate (class|function) '([^']+)'", text)
        if missing:
            module = re.search(r"'module': '([^']+)'", text)
            origin = f" from module '{module.group(1)}'" if module else ""
            return RefusedError(
                f"{path}: cannot load the model: it names the {missing.group(1)} "
                f"'{missing.group(2)}'{origin}, which Keras does not know or will not load in "
                "safe mode (for a custom layer of an installed package, pass --import MODULE)")
    innermost = chain[-1]
    return UserError(f"{path}: cannot load the Keras model: "
                     f"{innermost.__class__.__name__}: {_first_line(innermost)}")


def load_model(path: Path, source_format: str, stack: kt.KerasStack) -> Any:
    """Load a Keras model (``safe_mode=True``), or a SavedModel's serving function."""
    keras = stack.keras
    if source_format == "savedmodel":
        return _load_savedmodel(path, stack)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Keras' build/compile hints are not the user's concern
            model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as err:  # noqa: BLE001 - Keras raises many types for bad files
        raise _explain_load_error(path, err) from None
    if not isinstance(model, keras.Model):
        raise UserError(f"{path}: holds a {type(model).__name__}, not a Keras model")
    return model


class _SavedModelFunction:
    """A SavedModel's ``serving_default`` signature, shaped like a Keras model for tracing.

    A SavedModel is an exported graph, not Keras layers: dropout layers cannot
    be found in it, so it converts with whatever the export kept (usually the
    inference graph).
    """

    def __init__(self, signature: Any, stack: kt.KerasStack) -> None:
        self._signature = signature
        self._stack = stack
        _, kwargs = signature.structured_input_signature
        self.input_names = sorted(kwargs)
        self.specs = [stack.tf.TensorSpec(kwargs[n].shape, kwargs[n].dtype, name=n)
                      for n in self.input_names]

    def __call__(self, *args: Any) -> dict[str, Any]:
        return self._signature(**dict(zip(self.input_names, args, strict=True)))


def _load_savedmodel(path: Path, stack: kt.KerasStack) -> _SavedModelFunction:
    try:
        loaded = stack.tf.saved_model.load(str(path))
        signature = loaded.signatures["serving_default"]
    except KeyError:
        raise UserError(f"{path}: the SavedModel has no 'serving_default' signature") from None
    except Exception as err:  # noqa: BLE001 - TensorFlow raises many types for bad folders
        raise UserError(f"{path}: cannot load the SavedModel: {_first_line(err)}") from None
    function = _SavedModelFunction(signature, stack)
    function.keep_alive = loaded  # the signature needs its object graph alive
    return function


# --- 5. Per-site results ----------------------------------------------------------------


def describe_rewrite_site(site: Site) -> str:
    """One rewritten site as ``Op(shared_axes=…, ratio=…)``."""
    ratio = f"ratio={float(site.ratio or 0.0):.6g}"
    if site.becomes == spec.OP_TYPE:
        text = f"SpatialDropout(shared_axes={list(site.shared_axes or ())}, {ratio})"
    else:
        text = f"Dropout({ratio})"
    if (site.rule or "").startswith("keras_rnn_mask"):
        text = f"mask {text}"  # an RNN's dropout mask: the op applied to ones
    return text


def _summarise(descriptions: list[str]) -> list[str]:
    """``["X", "X", "Y"]`` -> ``["X x2", "Y"]`` (order kept)."""
    counts: dict[str, int] = {}
    for text in descriptions:
        counts[text] = counts.get(text, 0) + 1
    return [text if n == 1 else f"{text} x{n}" for text, n in counts.items()]


# --- The pipeline -------------------------------------------------------------------------


def _sample_inputs(specs: Sequence[Any], batch: int = 2, seed: int = 0) -> list[np.ndarray]:
    """A small valid batch for each traced input spec (unknown dims: batch, then 5)."""
    rng = np.random.default_rng(seed)
    arrays = []
    for tensor_spec in specs:
        shape = [batch if i == 0 and d is None else (5 if d is None else int(d))
                 for i, d in enumerate(tensor_spec.shape)]
        dtype = np.dtype(tensor_spec.dtype.as_numpy_dtype)
        if dtype.kind in "iu":
            # Token ids 0/1 are valid for any Embedding with a vocabulary of 2 or more.
            arrays.append(rng.integers(0, 2, size=shape).astype(dtype))
        elif dtype.kind == "b":
            arrays.append(rng.random(shape) < 0.5)
        else:
            arrays.append(rng.standard_normal(shape).astype(dtype))
    return arrays


def _verify(model: onnx.ModelProto, keras_model: Any, input_specs: Sequence[Any],
            input_names: Sequence[str], stack: kt.KerasStack) -> float:
    """Max |onnxruntime - Keras| in inference mode on a sample batch; UserError if it fails."""
    import onnxruntime as ort

    samples = _sample_inputs(input_specs)
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: the report says what matters
    try:
        session = ort.InferenceSession(model.SerializeToString(), options,
                                       providers=["CPUExecutionProvider"])
        got = session.run(None, dict(zip(input_names, samples, strict=True)))
    except Exception as err:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise UserError(f"the converted model does not run in onnxruntime: "
                        f"{_first_line(err)}") from None
    if isinstance(keras_model, _SavedModelFunction):
        expected = [np.asarray(v) for _, v in sorted(keras_model(*samples).items())]
    else:
        packed = samples[0] if len(samples) == 1 else stack.keras.tree.pack_sequence_as(
            keras_model.input, samples)
        expected = [np.asarray(v) for v in
                    stack.keras.tree.flatten(keras_model(packed, training=False))]
    worst = 0.0
    for want, have in zip(expected, got, strict=True):
        if want.shape != have.shape:
            raise UserError(f"the converted model's output shape {have.shape} differs from "
                            f"Keras' {want.shape}")
        diff = float(np.max(np.abs(want.astype(np.float64) - have.astype(np.float64)),
                            initial=0.0))
        scale = max(1.0, float(np.max(np.abs(want), initial=0.0)))
        if not math.isfinite(diff) or diff > VERIFY_TOLERANCE * scale:
            raise UserError(f"the converted model's inference output differs from Keras by "
                            f"{diff:.3g} (more than {VERIFY_TOLERANCE:g}); not written")
        worst = max(worst, diff)
    return worst


def convert_keras(
    model_path: str | Path,
    output_path: str | Path,
    *,
    opset: int = kt.DEFAULT_OPSET,
    strip: bool = False,
    trust_model: bool = False,
    imports: Sequence[str] = (),
    progress: ProgressStep = no_progress,
) -> ConversionReport:
    """Convert a Keras 3 model file to ONNX with its dropout kept switchable (see module doc).

    Raises UserError (one line, nothing written) for every expected failure.
    """
    model_path, output_path = Path(model_path), Path(output_path)
    check_opset(opset)
    source_format = detect_format(model_path)
    refuse_untrusted(model_path, source_format, trust_model)
    if output_path.exists() and os.path.samefile(output_path, model_path):
        raise RefusedError(f"{output_path}: the output would overwrite the input model")
    check_output_path(output_path)  # fail before the slow steps, not after them
    report = ConversionReport(str(model_path), str(output_path), source_format, opset, strip)
    clock = _Clock(report.seconds)

    with progress("loading TensorFlow"), clock("import"):
        stack = kt.import_keras_stack()
        from .. import passes
        import_modules(imports)
    with progress(f"loading {model_path.name}"), clock("load"):
        keras_model = load_model(model_path, source_format, stack)
    if isinstance(keras_model, _SavedModelFunction):
        sites = []
        report.warnings.append("a SavedModel holds no Keras layers: dropout layers cannot be "
                               "found; the exported graph is converted as it is")
    else:
        sites = kt.find_dropout_sites(keras_model, stack.keras)

    training_layers = [s for s in sites if s.active]
    fallback: dict[str, str] = {}
    while True:
        raw = _trace(keras_model, stack, opset, [s.layer for s in training_layers], progress,
                     clock)
        with progress("rewriting dropout"), clock("rewrite"):
            rewritten, rewritten_sites, unconvertible = _rewrite(raw.model)
        leftovers = _leftover_sites(rewritten, raw.scopes, training_layers, keras_model)
        if not leftovers:
            break
        # The passes could not convert these layers' training-mode ops: trace them
        # in inference mode instead and say so, rather than ship a broken model.
        reasons = _reasons_by_site(unconvertible, raw.scopes, training_layers)
        for site, op_type in leftovers:
            why = reasons.get(site.path, "no rewrite rule matched")
            fallback[site.path] = (f"its training-mode {op_type} could not be converted "
                                   f"({why}); exported for inference only")
        training_layers = [s for s in training_layers if s.path not in fallback]

    report.sites = _site_reports(sites, rewritten_sites, raw.scopes, fallback)
    _ensure_training_input(rewritten)
    final = rewritten
    if strip:
        with progress("stripping dropout"), clock("strip"):
            final = _strip(passes, rewritten)
    with progress("checking the ONNX model"), clock("check"):
        _check(final, strip)
        specs = (keras_model.specs if isinstance(keras_model, _SavedModelFunction)
                 else kt.keras_input_specs(keras_model, stack))
        report.max_abs_diff_vs_keras = _verify(final, keras_model, specs, raw.input_names,
                                               stack)
    report.inputs = [_value_info_dict(v) for v in final.graph.input]
    report.outputs = [_value_info_dict(v) for v in final.graph.output]
    report.training_input = None if strip else TRAINING_INPUT
    report.warnings += [f"{path}: {why}" for path, why in fallback.items()]
    if not strip and any(n.op_type == "Dropout" and n.domain in ("", "ai.onnx")
                         for _, n in iter_nodes(final)):
        report.notes.append(ORT_DROPOUT_NOTE)
    with clock("save"):
        save_model(final, output_path)
    return report


class _Clock:
    """``with clock("step"):`` adds the step's wall time to ``seconds[step]``."""

    def __init__(self, seconds: dict[str, float]) -> None:
        self.seconds = seconds

    @contextlib.contextmanager
    def __call__(self, step: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            self.seconds[step] = round(self.seconds.get(step, 0.0) + elapsed, 3)


def _trace(keras_model: Any, stack: kt.KerasStack, opset: int, training_layers: list[Any],
           progress: ProgressStep, clock: _Clock) -> kt.TraceResult:
    try:
        with progress("tracing the model"), clock("trace"):
            if isinstance(keras_model, _SavedModelFunction):
                traced = kt.trace_callable(keras_model, keras_model.specs, stack)
            else:
                traced = kt.trace_keras(keras_model, stack, training_layers)
        with progress("converting with tf2onnx"), clock("tf2onnx"):
            return kt.convert_traced(traced, stack, opset)
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 - tracing runs user layers; tf2onnx raises anything
        raise UserError(f"cannot convert the model with tf2onnx: "
                        f"{err.__class__.__name__}: {_first_line(err)}") from None


def _rewrite(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[Site], list[Site]]:
    """``passes.rewrite`` with ``training_mode`` defaulting to false.

    Also returns the rewrite's converted sites and the random ops it could not convert.
    """
    from ..passes import rewrite

    try:
        result, report = rewrite(model, training_default=False)
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 - report a pass failure in one line
        raise UserError(f"rewriting the exported dropout failed: "
                        f"{err.__class__.__name__}: {_first_line(err)}") from None
    return result, list(report.converted), list(report.unconvertible)


def _strip(passes: Any, model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return passes.strip(model).model
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 - report a pass failure in one line
        raise UserError(f"stripping the dropout failed: "
                        f"{err.__class__.__name__}: {_first_line(err)}") from None


def _leftover_sites(model: onnx.ModelProto, scopes: dict[str, str],
                    training: list[kt.DropoutSite], keras_model: Any,
                    ) -> list[tuple[kt.DropoutSite, str]]:
    """Dropout layers whose training-mode ops are still TensorFlow ops after the rewrite.

    A TensorFlow op in any other layer is an error naming that layer.
    """
    by_path = {s.path: s for s in training}
    found: dict[str, tuple[kt.DropoutSite, str]] = {}
    for node in kt.unconverted_nodes(model):
        path = kt.layer_of_node(node.name, scopes) or next(
            (p for p in map(lambda o: kt.layer_of_node(o, scopes), node.output) if p), None)
        site = _owning_site(path, by_path)
        if site is not None:
            found.setdefault(site.path, (site, node.op_type))
            continue
        raise UserError(_unconvertible_message(path, node.op_type, keras_model))
    return list(found.values())


def _reasons_by_site(unconvertible: list[Site], scopes: dict[str, str],
                     sites: list[kt.DropoutSite]) -> dict[str, str]:
    """Layer path → the rewrite's reason for not converting its random op."""
    by_path = {s.path: s for s in sites}
    reasons = {}
    for entry in unconvertible:
        site = _owning_site(kt.layer_of_node(entry.name, scopes), by_path)
        if site is not None and entry.reason:
            reasons.setdefault(site.path, entry.reason)
    return reasons


def _owning_site(path: str | None, by_path: dict[str, kt.DropoutSite]) -> kt.DropoutSite | None:
    """The dropout site at ``path`` or enclosing it (an RNN layer owns its cell's ops)."""
    while path:
        if path in by_path:
            return by_path[path]
        path = path.rpartition("/")[0]
    return None


def _unconvertible_message(path: str | None, op_type: str, keras_model: Any) -> str:
    if path is None:
        return f"tf2onnx cannot convert the TensorFlow op {op_type} (outside any Keras layer)"
    classes = {p: type(layer).__name__ for p, layer in kt.iter_sublayers(keras_model)}
    return (f"layer '{path}' ({classes.get(path, 'unknown class')}) uses the TensorFlow op "
            f"{op_type}, which tf2onnx cannot convert to ONNX")


def _site_reports(sites: list[kt.DropoutSite], rewritten: list[Site],
                  scopes: dict[str, str], fallback: dict[str, str]) -> list[SiteReport]:
    """Join the Keras dropout layers with the rewrite's sites (by TensorFlow name scope)."""
    owned: dict[str, list[str]] = {}
    unattributed = 0
    for entry in rewritten:
        path = kt.layer_of_node(entry.name, scopes)
        site = _owning_site(path, {s.path: s for s in sites})
        if site is None:
            unattributed += 1
            continue
        owned.setdefault(site.path, []).append(describe_rewrite_site(entry))
    reports = []
    for site in sites:
        report = SiteReport(site.path, site.layer_class, site.kind, site.rate, dict(site.details),
                            training="kept", converted_to=_summarise(owned.get(site.path, [])))
        if not site.active:
            report.training = "none"
            report.note = "rate 0: nothing to convert"
        elif site.path in fallback:
            report.training = "inference-only"
            report.note = fallback[site.path]
        elif not report.converted_to:
            report.note = (f"random ops converted, {unattributed} rewritten site(s) not "
                           "attributable to a layer by name" if unattributed
                           else "no random ops found in the trace")
        reports.append(report)
    return reports


def _ensure_training_input(model: onnx.ModelProto) -> None:
    """Give a model without any dropout the same interface: an (unused) ``training_mode``.

    The rewrite adds the input only when it converted something; callers can
    then feed ``training_mode`` to every converted model alike.
    """
    if any(i.name == TRAINING_INPUT for i in model.graph.input):
        return
    model.graph.input.append(onnx.helper.make_tensor_value_info(
        TRAINING_INPUT, onnx.TensorProto.BOOL, []))
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.array(False), TRAINING_INPUT))


def _check(model: onnx.ModelProto, strip: bool) -> None:
    """Full ONNX check, no TensorFlow op, and the structural promises of each mode."""
    left = kt.unconverted_nodes(model)
    if left:
        raise UserError(f"internal error: TensorFlow op {left[0].op_type} left in the model")
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as err:  # noqa: BLE001 - checker raises ValidationError or InferenceError
        raise UserError(f"the converted model fails onnx.checker: {_first_line(err)}") from None
    custom = [n for _, n in iter_nodes(model) if n.domain == spec.DOMAIN]
    inputs = [i.name for i in model.graph.input]
    if strip and (custom or TRAINING_INPUT in inputs):
        raise UserError("internal error: the stripped model still holds dropout")
    if not strip:
        if inputs.count(TRAINING_INPUT) != 1:
            raise UserError(f"internal error: the model has no '{TRAINING_INPUT}' input")
        defined = {(f.domain, f.name) for f in model.functions}
        if custom and (spec.DOMAIN, spec.OP_TYPE) not in defined:
            raise UserError("internal error: SpatialDropout nodes without a function body")


def _value_info_dict(info: onnx.ValueInfoProto) -> dict[str, Any]:
    tensor = info.type.tensor_type
    dims = [d.dim_param or (d.dim_value if d.HasField("dim_value") else None)
            for d in tensor.shape.dim]
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
    return {"name": info.name, "dtype": dtype, "shape": dims}
