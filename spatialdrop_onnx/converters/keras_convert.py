"""The Keras -> ONNX ``convert`` pipeline: the steps, in order, and what to do when one fails.

Steps (each a ``progress`` step, so the CLI can show the slow ones):

1. check the input path and its format *before* importing TensorFlow
   (:mod:`.keras_input`);
2. import TensorFlow/Keras/tf2onnx and the user's ``--import`` modules;
3. load the model; find its random layers (:mod:`.keras_layers`): the dropout
   family by class, augmentation layers, and — when some layer's class is not
   Keras' own — the layers a training-mode probe trace sees drawing random
   numbers (:mod:`.keras_probe`);
4. trace with only those layers in training mode (:mod:`.keras_trace`) and
   export with tf2onnx (:mod:`.keras_export`);
5. rewrite the exporter's random subgraphs into SpatialDropout / ONNX Dropout
   with a ``training_mode`` input defaulting to false (``passes.rewrite``); a
   layer whose random ops the rewrite could not convert is traced again in
   inference mode and reported by name (:mod:`.keras_attribution`);
6. ``--strip``: fold every dropout away (``passes.strip``); then replace the
   ``Loop`` of each Keras GRU/LSTM the ONNX ``GRU``/``LSTM`` op can compute by that
   op (:mod:`.keras_rnn`) and give the remaining RNN ``Loop`` bodies the form
   OpenVINO and onnx.reference read (``passes.portable_loops``);
7. check the structure and compare with Keras' inference output
   (:mod:`.keras_verify`). If forcing a probed layer to training mode changed
   the model's non-random output, that layer (class by class) is traced in
   inference mode instead, with a warning;
8. save atomically.

Randomness the ONNX model does not keep is never silent: it is a warning in
the report, and :meth:`.ConversionReport.partial_error` gives the exit-5 error
the CLI ends with after printing the report.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ..errors import RefusedError, UserError, printable
from ..graph import TRAINING_MODE, iter_nodes, set_training_default
from ..modelio import check_output_path, save_model
from ..sessions import ORT_DROPOUT_NOTE
from ..sites import Site
from .keras_attribution import layer_of_name, layer_of_node, owner, sites_by_layer
from .keras_export import RawExport, export_traced, unconverted_nodes
from .keras_input import (
    SavedModelFunction,
    detect_format,
    import_modules,
    load_model,
    refuse_untrusted,
)
from .keras_layers import LayerKind, RandomLayer, iter_sublayers, survey_layers
from .keras_probe import probe_random_layers
from .keras_report import ConversionReport, layer_report, value_info_dict
from .keras_rnn import RnnFusion, fuse_keras_rnns
from .keras_stack import DEFAULT_OPSET, KerasStack, check_opset, first_line, import_keras_stack
from .keras_trace import keras_input_specs, trace_callable, trace_keras
from .keras_verify import (
    Verification,
    VerificationMismatch,
    check_structure,
    verify_against_keras,
)

#: Name of the boolean graph input the rewrite adds.
TRAINING_INPUT = TRAINING_MODE

ProgressStep = Callable[[str], AbstractContextManager]


@contextlib.contextmanager
def no_progress(label: str) -> Iterator[None]:
    """The default ``progress``: show nothing."""
    yield


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


@dataclass
class _Attempt:
    """One round of trace → export → rewrite → check with a set of layers in training mode."""

    model: onnx.ModelProto
    """The model to write (rewritten; stripped with ``--strip``)."""
    raw: RawExport
    converted: list[Site]
    fallback: dict[str, str]
    """Layer path → why it was traced in inference mode after all."""
    stray: list[Site] = field(default_factory=list)
    """Random ops the rewrite left that no layer in training mode owns."""
    check: Verification = Verification(0.0)
    rnns: list[RnnFusion] = field(default_factory=list)
    """Each Keras GRU/LSTM: fused into the ONNX op, or why its Loop stays."""


class _Converter:
    """The conversion of one loaded model (state shared by the attempts)."""

    def __init__(self, keras_model: Any, stack: KerasStack, *, opset: int, strip: bool,
                 progress: ProgressStep, clock: _Clock) -> None:
        self.keras_model = keras_model
        self.stack = stack
        self.opset = opset
        self.strip = strip
        self.progress = progress
        self.clock = clock
        self.is_savedmodel = isinstance(keras_model, SavedModelFunction)

    # -- finding the random layers ---------------------------------------------------------

    def random_layers(self, warnings: list[str]) -> list[RandomLayer]:
        """Dropout-family and augmentation layers, then the probe's random layers."""
        if self.is_savedmodel:
            warnings.append(self.keras_model.layers_warning())
            return list(self.keras_model.random_layers)
        survey = survey_layers(self.keras_model, self.stack.keras)
        layers = list(survey.random_layers)
        if survey.probe_candidates:
            with self.progress("probing layers for randomness"), self.clock("probe"):
                try:
                    probe = probe_random_layers(self.keras_model, self.stack,
                                                [layer.path for layer in layers])
                except Exception as err:  # noqa: BLE001 - tracing runs user layers
                    names = ", ".join(printable(p) for p, _ in survey.probe_candidates[:5])
                    warnings.append(f"could not trace the model in training mode to check "
                                    f"whether layers {names} draw random numbers "
                                    f"({err.__class__.__name__}: {first_line(err)})")
                    return layers
            layers += probe.layers
            if probe.unattributed:
                warnings.append(f"{len(probe.unattributed)} random TensorFlow op(s) outside "
                                f"every layer are not kept in training mode (e.g. "
                                f"'{printable(probe.unattributed[0])}')")
        return layers

    # -- one attempt ---------------------------------------------------------------------

    def export(self, training_layers: Sequence[RandomLayer]) -> RawExport:
        """Trace with ``training_layers`` in training mode and export with tf2onnx."""
        try:
            with self.progress("tracing the model"), self.clock("trace"):
                if self.is_savedmodel:
                    traced = trace_callable(self.keras_model, self.keras_model.specs,
                                            self.stack)
                else:
                    traced = trace_keras(self.keras_model, self.stack,
                                         [layer.layer for layer in training_layers])
            with self.progress("converting with tf2onnx"), self.clock("tf2onnx"):
                return export_traced(traced, self.stack, self.opset)
        except UserError:
            raise
        except Exception as err:  # noqa: BLE001 - tracing runs user layers; tf2onnx raises anything
            raise UserError(f"cannot convert the model with tf2onnx: "
                            f"{err.__class__.__name__}: {first_line(err)}") from None

    def attempt(self, training_layers: Sequence[RandomLayer]) -> _Attempt:
        """Convert with ``training_layers`` in training mode; VerificationMismatch if wrong.

        A layer whose random ops stay unconverted is traced again in inference
        mode (recorded in ``fallback``); anything else unconvertible is an error.
        """
        training = list(training_layers)
        fallback: dict[str, str] = {}
        while True:
            raw = self.export(training)
            with self.progress("rewriting dropout"), self.clock("rewrite"):
                rewritten, converted, unconvertible = _rewrite(raw.model)
            lost, stray = self.leftovers(rewritten, raw.scopes, training, unconvertible)
            if not lost:
                break
            fallback.update(lost)
            training = [layer for layer in training if layer.path not in fallback]
        _ensure_training_input(rewritten)
        final = rewritten
        if self.strip:
            with self.progress("stripping dropout"), self.clock("strip"):
                final = _strip(rewritten)
        with self.clock("rewrite"):
            rnns = ([] if self.is_savedmodel
                    else fuse_keras_rnns(final, self.keras_model, self.stack.keras, raw.scopes))
            _portable_loops(final)
        with self.progress("checking the ONNX model"), self.clock("check"):
            check_structure(final, self.strip)
            specs = (self.keras_model.specs if self.is_savedmodel
                     else keras_input_specs(self.keras_model, self.stack))
            check = verify_against_keras(final, self.keras_model, specs, raw.input_names,
                                         self.stack, scopes=raw.scopes)
        return _Attempt(final, raw, converted, fallback, stray, check, rnns)

    def leftovers(self, model: onnx.ModelProto, scopes: dict[str, str],
                  training: list[RandomLayer], unconvertible: list[Site],
                  ) -> tuple[dict[str, str], list[Site]]:
        """Layers in training mode whose random ops the rewrite left, and stray random ops.

        A TensorFlow op in a layer not in training mode is an error naming that layer.
        """
        by_path = {layer.path: layer for layer in training}
        lost: dict[str, str] = {}
        stray: list[Site] = []
        for site in unconvertible:
            layer = owner(layer_of_name(site.name, scopes), by_path)
            if layer is None:
                stray.append(site)
            elif layer.path not in lost:
                lost[layer.path] = (f"its training-mode {site.op_type} could not be converted "
                                    f"({site.reason or 'no rewrite rule matched'}); exported "
                                    "for inference only")
        for node in unconverted_nodes(model):
            path = layer_of_node(node, scopes)
            layer = owner(path, by_path)
            if layer is None:
                raise UserError(self._unconvertible_message(path, node.op_type))
            lost.setdefault(layer.path, f"its training-mode {node.op_type} could not be "
                                        "converted; exported for inference only")
        return lost, stray

    def _unconvertible_message(self, path: str | None, op_type: str) -> str:
        if path is None:
            return (f"tf2onnx cannot convert the TensorFlow op {op_type} "
                    "(outside any Keras layer)")
        classes = {p: type(layer).__name__ for p, layer in iter_sublayers(self.keras_model)}
        return (f"layer '{printable(path)}' ({printable(classes.get(path, 'unknown class'))}) "
                f"uses the TensorFlow op {op_type}, which tf2onnx cannot convert to ONNX")

    # -- attempts until the model verifies -----------------------------------------------------

    def convert(self, layers: list[RandomLayer]) -> _Attempt:
        """The best attempt: every random layer in training mode that keeps the model correct.

        If the model with the probed layers forced to training mode does not
        reproduce Keras' inference output, forcing changed non-random behaviour
        (e.g. a custom block with BatchNormalization inside): those layers go
        back to inference mode, class by class, and are reported.
        """
        forced = [layer for layer in layers if layer.kept_in_training]
        probed = [layer for layer in forced if layer.kind is LayerKind.RANDOM]
        try:
            return self.attempt(forced)
        except VerificationMismatch as err:
            if not probed:
                raise
            mismatch = err.difference
        base = [layer for layer in forced if layer.kind is not LayerKind.RANDOM]
        best = self.attempt(base)  # still wrong: not the probed layers' doing, so raise
        classes: dict[str, list[RandomLayer]] = {}
        for layer in probed:
            classes.setdefault(layer.layer_class, []).append(layer)
        blamed: list[RandomLayer] = []
        if len(classes) == 1:
            blamed = probed
        else:
            accepted: list[RandomLayer] = []
            for members in classes.values():
                try:
                    best = self.attempt(base + accepted + members)
                    accepted += members
                except VerificationMismatch:
                    blamed += members
        for layer in blamed:
            best.fallback[layer.path] = ("forcing it to training mode changed the model's "
                                         f"non-random output ({mismatch}); exported for "
                                         "inference only")
        return best


def convert_keras(
    model_path: str | Path,
    output_path: str | Path,
    *,
    opset: int = DEFAULT_OPSET,
    strip: bool = False,
    trust_model: bool = False,
    imports: Sequence[str] = (),
    progress: ProgressStep = no_progress,
    training_default: bool = False,
) -> ConversionReport:
    """Convert a Keras 3 model file to ONNX with its dropout kept switchable (see module doc).

    ``training_default`` is the initializer default of the ``training_mode`` input
    (the self-check always compares the inference output, with it false).

    Raises UserError (one line, nothing written) for every expected failure.
    When some randomness could not be kept the model is still written, and the
    report says so (``report.partial_error()``).
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
        stack = import_keras_stack()
        from .. import passes  # noqa: F401 - imported here so its time counts as "import"
        import_modules(imports)
    with progress(f"loading {model_path.name}"), clock("load"):
        keras_model = load_model(model_path, source_format, stack)
    converter = _Converter(keras_model, stack, opset=opset, strip=strip, progress=progress,
                           clock=clock)
    layers = converter.random_layers(report.warnings)
    result = converter.convert(layers)

    _fill_report(report, layers, result)
    if training_default and not strip:  # a model without the switch is left as it is
        set_training_default(result.model, True)
    with clock("save"):
        save_model(result.model, output_path)
    return report


def _fill_report(report: ConversionReport, layers: list[RandomLayer], result: _Attempt
                 ) -> None:
    """Layer reports (Keras layer + its Sites), interface, warnings and notes."""
    owned, unowned = sites_by_layer(result.converted, result.raw.scopes,
                                    {layer.path: layer for layer in layers})
    for layer in layers:
        report.add_layer(layer_report(layer, tuple(owned.get(layer.path, ())),
                                      result.fallback.get(layer.path), len(unowned)))
    report.unattributed_sites = list(unowned)
    for site in result.stray:
        report.warnings.append(f"random op '{site.name}' ({site.op_type}) belongs to no layer "
                               f"in training mode and is left as it is: {site.reason}")
    report.notes += [rnn.note() for rnn in result.rnns]
    model = result.model
    report.inputs = [value_info_dict(v) for v in model.graph.input]
    report.outputs = [value_info_dict(v) for v in model.graph.output]
    report.training_input = None if report.strip else TRAINING_INPUT
    report.max_abs_diff_vs_keras = result.check.max_diff
    report.warnings += result.check.warnings()
    report.self_check = result.check.to_dict()
    if not report.strip and any(n.op_type == "Dropout" and n.domain in ("", "ai.onnx")
                                for _, n in iter_nodes(model)):
        report.notes.append(ORT_DROPOUT_NOTE)


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
                        f"{err.__class__.__name__}: {first_line(err)}") from None
    return result, list(report.converted), list(report.unconvertible)


def _strip(model: onnx.ModelProto) -> onnx.ModelProto:
    from ..passes import strip

    try:
        return strip(model).model
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 - report a pass failure in one line
        raise UserError(f"stripping the dropout failed: "
                        f"{err.__class__.__name__}: {first_line(err)}") from None


def _portable_loops(model: onnx.ModelProto) -> None:
    """tf2onnx's RNN loops in the form OpenVINO and onnx.reference read (in place)."""
    from ..passes.portable_loops import make_loops_portable

    try:
        make_loops_portable(model)
    except Exception as err:  # noqa: BLE001 - report a pass failure in one line
        raise UserError(f"rewriting the RNN loops failed: "
                        f"{err.__class__.__name__}: {first_line(err)}") from None


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
