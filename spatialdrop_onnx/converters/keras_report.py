"""What ``convert`` did: one report per random Keras layer, holding the Sites it became.

A :class:`LayerReport` is a Keras layer (path, class, kind, rate) plus the
typed :class:`~spatialdrop_onnx.sites.Site` records the rewrite made of it and
its fate in training mode (:class:`Training`). :class:`ConversionReport` is the
whole conversion; ``to_dict`` is the ``--json`` report (strict JSON) and
``summary_lines`` the text summary. Every name that comes from the model is
passed through :func:`~spatialdrop_onnx.errors.printable` before display.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import onnx

from .. import spec
from ..errors import PartialResult, printable
from ..sites import Site
from .keras_layers import LayerKind, RandomLayer


class Training(StrEnum):
    """What a random layer does in the ONNX model when ``training_mode`` is true."""

    #: Random, as in Keras training mode.
    KEPT = "kept"
    #: Its randomness was lost: the identity in both modes (``note`` says why). Partial.
    INFERENCE_ONLY = "inference-only"
    #: The layer draws nothing (rate 0).
    NONE = "none"
    #: An augmentation layer: Keras applies it only when fitting; exported as the identity.
    SKIPPED = "skipped"


def describe_site(site: Site) -> str:
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


@dataclass
class LayerReport:
    """One random Keras layer and what it became in the ONNX model."""

    path: str
    layer_class: str
    kind: LayerKind
    rate: float | None
    details: dict[str, Any]
    training: Training
    sites: tuple[Site, ...] = ()
    """The rewrite's sites made from this layer's random ops."""
    note: str = ""

    @classmethod
    def of(cls, layer: RandomLayer, training: Training, sites: tuple[Site, ...] = (),
           note: str = "") -> LayerReport:
        return cls(layer.path, layer.layer_class, layer.kind, layer.rate, dict(layer.details),
                   training, sites, note)

    @property
    def converted_to(self) -> list[str]:
        """The ONNX nodes now implementing the layer, e.g. ``SpatialDropout(…) x2``."""
        return _summarise([describe_site(s) for s in self.sites])

    @property
    def partial(self) -> bool:
        """Whether the layer's randomness was lost (the conversion is partial)."""
        return self.training is Training.INFERENCE_ONLY

    def describe(self) -> str:
        """One line for the text summary (model-supplied names escaped)."""
        if self.kind is LayerKind.GAUSSIAN_NOISE:
            rate = f"stddev={self.rate:g}"
        elif self.rate is None:
            rate = "random"
        else:
            rate = f"rate={self.rate:g}"
        if self.details.get("recurrent_dropout"):
            rate += f", recurrent={self.details['recurrent_dropout']:g}"
        head = f"{printable(self.path)} ({printable(self.layer_class)}, {rate})"
        body = {Training.KEPT: ", ".join(self.converted_to) or "random ops",
                Training.INFERENCE_ONLY: "INFERENCE ONLY",
                Training.NONE: "no randomness",
                Training.SKIPPED: "identity (augmentation)"}[self.training]
        return f"{head} -> {body}" + (f" ({printable(self.note)})" if self.note else "")

    def to_dict(self) -> dict[str, Any]:
        """Strict-JSON description, with the Sites as ``onnx_sites``."""
        return {"path": self.path, "layer_class": self.layer_class, "kind": self.kind.value,
                "rate": self.rate, "details": dict(self.details),
                "training": self.training.value, "converted_to": self.converted_to,
                "onnx_sites": [s.to_dict() for s in self.sites], "note": self.note}


def layer_report(layer: RandomLayer, sites: tuple[Site, ...], fallback: str | None,
                 unattributed: int) -> LayerReport:
    """What became of ``layer``: its Sites, or why it has none.

    ``fallback``: why the layer was traced in inference mode after all (None if
    it was not); ``unattributed``: how many rewritten sites no layer's scope holds.
    """
    if layer.kind is LayerKind.AUGMENTATION:
        return LayerReport.of(layer, Training.SKIPPED, note="Keras applies it only when "
                              "training; exported as the identity")
    if not layer.active:
        return LayerReport.of(layer, Training.NONE, note="rate 0: nothing to convert")
    if fallback is None and layer.inference_only:
        fallback = layer.inference_only
    if fallback is not None:
        return LayerReport.of(layer, Training.INFERENCE_ONLY, note=fallback)
    if sites:
        return LayerReport.of(layer, Training.KEPT, sites)
    if unattributed:
        return LayerReport.of(layer, Training.KEPT, note=(
            f"random ops converted; {unattributed} rewritten site(s) not attributable to a "
            "layer by name"))
    return LayerReport.of(layer, Training.NONE,
                          note="no random op of this layer reached the trace")


def value_info_dict(info: onnx.ValueInfoProto) -> dict[str, Any]:
    """A graph input or output as the report lists it: name, dtype, shape (``batch``, ints)."""
    tensor = info.type.tensor_type
    dims = [d.dim_param or (d.dim_value if d.HasField("dim_value") else None)
            for d in tensor.shape.dim]
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
    return {"name": info.name, "dtype": dtype, "shape": dims}


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
    layers: list[LayerReport] = field(default_factory=list)
    """Every random layer: dropout family, probed random layers, augmentation."""
    unattributed_sites: list[Site] = field(default_factory=list)
    """Rewrite sites no layer's name scope holds."""
    max_abs_diff_vs_keras: float | None = None
    self_check: dict[str, Any] | None = None
    """How the output was compared with Keras: ``method`` ``exact``, ``ill-conditioned``
    or ``statistical`` (Keras itself random at inference), with the numbers."""
    seconds: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    """Randomness the model does not keep in training mode (with the reason)."""
    notes: list[str] = field(default_factory=list)
    """How to run the model correctly (runtime caveats), augmentation layers."""

    def add_layer(self, entry: LayerReport) -> None:
        """Add a layer report; a layer exported for inference only is a warning,
        an augmentation layer a note."""
        self.layers.append(entry)
        if entry.partial:
            self.warnings.append(f"{entry.path} ({entry.layer_class}): {entry.note}")
        elif entry.training is Training.SKIPPED:
            self.notes.append(f"{entry.path} ({entry.layer_class}): augmentation layer, "
                              "applied by Keras only when training; exported as the identity")

    @property
    def partial_layers(self) -> list[LayerReport]:
        """Random layers exported for inference only."""
        return [layer for layer in self.layers if layer.partial]

    def partial_error(self) -> PartialResult | None:
        """The error to end with (exit 5) when some randomness was lost, else None."""
        lost = self.partial_layers
        if not lost:
            return None
        names = ", ".join(f"'{printable(layer.path)}' ({printable(layer.layer_class)})"
                          for layer in lost)
        return PartialResult(f"wrote {printable(self.output)}, but {len(lost)} random layer(s) "
                             f"are exported for inference only: {names}")

    def to_dict(self) -> dict[str, Any]:
        """Strict-JSON report. ``sites`` holds one entry per random Keras layer."""
        return {
            "input": self.input, "output": self.output, "source_format": self.source_format,
            "opset": self.opset, "strip": self.strip, "inputs": self.inputs,
            "outputs": self.outputs, "training_input": self.training_input,
            "sites": [layer.to_dict() for layer in self.layers],
            "unattributed_sites": [s.to_dict() for s in self.unattributed_sites],
            "max_abs_diff_vs_keras": self.max_abs_diff_vs_keras,
            "self_check": self.self_check,
            "seconds": dict(self.seconds), "warnings": list(self.warnings),
            "notes": list(self.notes), "partial": bool(self.partial_layers),
        }

    def summary_lines(self) -> list[str]:
        """Human-readable summary."""
        lines = [f"converted {printable(self.input)} -> {printable(self.output)} "
                 f"(opset {self.opset}" + (", stripped for inference)" if self.strip else ")")]
        random = [layer for layer in self.layers if layer.training is not Training.SKIPPED]
        kept = sum(layer.training is Training.KEPT for layer in random)
        lines.append(f"dropout sites: {len(random)} found, {kept} random in training mode"
                     + ("" if self.strip else f" (input '{self.training_input}', default false)"))
        lines += [f"  {layer.describe()}" for layer in self.layers]
        random = (self.self_check or {}).get("random")
        if random:
            lines.append(f"check: Keras is random at inference; onnxruntime with "
                         f"'{self.training_input}' true compared statistically over "
                         f"{random['runs']} runs (mean |z| {random['mean_abs_z']:.2f}, std ratio "
                         f"{random['std_ratio']:.2f})")
        elif self.max_abs_diff_vs_keras is not None:
            lines.append(f"check: onnxruntime vs Keras inference, max abs diff "
                         f"{self.max_abs_diff_vs_keras:.2e}")
        lines += [f"warning: {printable(w, limit=400)}" for w in self.warnings]
        lines += [f"note: {printable(n, limit=400)}" for n in self.notes]
        return lines
