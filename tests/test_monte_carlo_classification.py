"""``monte_carlo(..., classification=True)``: entropies and mutual information of the samples.

The reference is written from the definitions in numpy (float64) on the samples
the same model call returns (``keep_samples``): with p_s the probability vector
of sample s and p̄ their mean, H(p̄), mean_s H(p_s) and their difference, over
the last axis, natural log, 0·log 0 = 0. The models make probabilities that are
exactly 0 (a dropped class, a class that is always 0, a logit of -1000), so a
NaN from 0·log 0 fails the test. Both strategies run in every runtime of the
README table (tract, which runs no Loop: the batch strategy).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from dropout_checks import sample_data
from onnx import TensorProto
from passes_helpers import parse
from runtimes import TABLE_RUNTIMES, runner

import spatialdrop_onnx as sd
from spatialdrop_onnx.cli import main
from spatialdrop_onnx.errors import UsageError, UserError

N = 24
STRATEGIES = ("batch", "loop")
HEADER = '<ir_version: 10, opset_import: ["": 18, "org.spatialdrop": 1]>'
#: Element-wise dropout on 5 positive scores, a constant score 0.5 appended, normalised, then
#: a class that is always 0: every row sums to 1, dropped classes are exactly 0 and the last
#: class is 0 in every sample (and in the mean). ``best`` (int64) is not sampled.
PROBABILITIES = f"""{HEADER}
    g (float[B,5] x, bool training_mode) => (float[B,7] p, int64[B] best)
      <float r = {{0.5}}, bool training_mode = {{0}}, int64[4] one_more = {{0, 0, 0, 1}},
       float half = {{0.5}}, float nothing = {{0.0}}, int64[1] classes = {{1}}> {{
        d = org.spatialdrop.SpatialDropout(x, r, training_mode)
        e = Pad(d, one_more, half)
        s = ReduceSum<keepdims = 1>(e, classes)
        q = Div(e, s)
        p = Pad(q, one_more, nothing)
        best = ArgMax<axis = 1, keepdims = 0>(p)
    }}"""
#: Logits over a [B, T, C] sequence (channel dropout on T: whole rows of logits dropped to 0)
#: with a class of logit -1000 appended: its softmax probability is exactly 0 in float.
LOGITS = f"""{HEADER}
    g (float[B,3,4] x, bool training_mode) => (float[B,3,5] z)
      <float r = {{0.3}}, bool training_mode = {{0}}, int64[6] one_more = {{0, 0, 0, 0, 0, 1}},
       float very_unlikely = {{-1000.0}}, float[4] scale = {{4.0, -3.0, 2.0, 0.5}}> {{
        y = Mul(x, scale)
        d = org.spatialdrop.SpatialDropout<shared_axes = [2]>(y, r, training_mode)
        z = Pad(d, one_more, very_unlikely)
    }}"""
#: tract runs no Loop: the batch strategy only.
CASES = [(strategy, kind) for strategy in STRATEGIES for kind in TABLE_RUNTIMES
         if not (kind == "tract" and strategy == "loop")]


def _entropy(p: np.ndarray) -> np.ndarray:
    """-sum p log p over the last axis, 0 log 0 = 0 (float64)."""
    p = p.astype(np.float64)
    logs = np.log(np.where(p > 0, p, 1.0))
    return -(p * logs).sum(-1)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64)
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _expected(samples: np.ndarray, logits: bool) -> tuple[np.ndarray, ...]:
    """(entropy of the mean, mean entropy, mutual information) of [N, ..., C] samples."""
    p = _softmax(samples) if logits else samples.astype(np.float64)
    predictive = _entropy(p.mean(0))
    expected = _entropy(p).mean(0)
    return predictive, expected, predictive - expected


@pytest.fixture(scope="module")
def built() -> dict[tuple[str, str], sd.PassResult]:
    """Both models' MC models with every statistic and the samples, per strategy."""
    sources = {"probabilities": (parse(PROBABILITIES), False), "logits": (parse(LOGITS), True)}
    built = {(name, strategy): sd.monte_carlo(model, samples=N, strategy=strategy,
                                              keep_samples=True, classification=True,
                                              logits=logits)
             for name, (model, logits) in sources.items() for strategy in STRATEGIES}
    for result in built.values():
        onnx.checker.check_model(result.model, full_check=True)
    return built


FEEDS = {"probabilities": {"x": sample_data((6, 5), np.dtype(np.float32))},
         "logits": {"x": sample_data((4, 3, 4), np.dtype(np.float32), seed=1) - 1.5}}


@pytest.mark.parametrize("name", ["probabilities", "logits"])
@pytest.mark.parametrize(("strategy", "kind"), CASES)
def test_entropies_match_numpy_on_the_samples(strategy, kind, name, built):
    model, report = built[name, strategy]
    assert report.strategy == strategy
    source = "p" if name == "probabilities" else "z"
    assert report.classification == (source,) and report.logits == (name == "logits")
    outputs = [o.name for o in model.graph.output]
    assert outputs == [f"{source}_{k}" for k in ("mean", "std", "entropy", "expected_entropy",
                                                 "mutual_information", "samples")]
    mean, std, entropy, expected, information, samples = runner(kind, model)(FEEDS[name])
    if kind == "reference" and strategy == "loop" and not report.chunked:
        # onnx.reference joins a Loop's scan outputs with np.vstack ([N*B, ...], onnx 1.23),
        # where ONNX stacks them on a new axis ([N, B, ...]) as the other runtimes do (the
        # folding Loop reshapes its scan output to [N, B, ...] itself).
        assert samples.shape[0] == N * mean.shape[0]
        samples = samples.reshape(N, *mean.shape)
    assert samples.shape[0] == N and entropy.shape == samples.shape[1:-1]
    for value in (entropy, expected, information):
        assert value.dtype == np.float32 and np.isfinite(value).all()
    if name == "probabilities":
        assert (samples == 0).any(axis=-1).all() and (samples[..., -1] == 0).all()
    else:
        assert (_softmax(samples)[..., -1] == 0).all()  # exactly 0 in float64 too
    want = _expected(samples, logits=name == "logits")
    np.testing.assert_allclose(entropy, want[0], rtol=1e-5, atol=2e-6)
    np.testing.assert_allclose(expected, want[1], rtol=1e-5, atol=2e-6)
    np.testing.assert_allclose(information, want[2], rtol=1e-4, atol=4e-6)
    # The samples differ, so the mean is more uncertain than the samples on average.
    assert (information > 1e-3).mean() > 0.9
    np.testing.assert_allclose(mean, samples.mean(0), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("per_iteration", [1, 4])
def test_entropies_of_a_loop_folding_several_samples_per_iteration(per_iteration, monkeypatch):
    """The folding Loop sums each iteration's k samples into the running sums: with the
    budget shrunk so that k of the N samples fit at this batch, the statistics are still
    those of the N samples."""
    from spatialdrop_onnx.passes import monte_carlo as mc

    x = FEEDS["probabilities"]["x"]
    row = 7 * 4  # the largest sampled activation: the padded [B, 7] probabilities
    monkeypatch.setattr(mc, "FOLD_CACHE_BYTES", per_iteration * x.shape[0] * row)
    model, report = sd.monte_carlo(parse(PROBABILITIES), samples=N, strategy="loop",
                                   keep_samples=True, classification=True)
    assert report.chunked and report.row_bytes == row
    mean, std, entropy, expected, information, samples = sd.inference_session(model).run(
        None, {"x": x})
    assert samples.shape == (N, *mean.shape)
    assert len({s.tobytes() for s in samples}) == N  # every sample drawn afresh
    want = _expected(samples, logits=False)
    np.testing.assert_allclose(entropy, want[0], rtol=1e-5, atol=2e-6)
    np.testing.assert_allclose(expected, want[1], rtol=1e-5, atol=2e-6)
    np.testing.assert_allclose(information, want[2], rtol=1e-4, atol=4e-6)
    np.testing.assert_allclose(mean, samples.mean(0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(std, samples.std(0, dtype=np.float64), rtol=1e-4, atol=1e-6)


def test_certain_samples_have_no_mutual_information():
    """Ratio 0: every sample is the same, so H(mean) = mean H and the mutual information is
    0 (clamped, never a rounding-negative value), while the entropy is not."""
    source = parse(PROBABILITIES.replace("float r = {0.5}", "float r = {0.0}"))
    x = FEEDS["probabilities"]
    for strategy in STRATEGIES:
        model, _ = sd.monte_carlo(source, samples=N, strategy=strategy, classification=True)
        _, _, entropy, expected, information = sd.inference_session(model).run(None, x)
        np.testing.assert_allclose(entropy, expected, rtol=1e-5)
        assert (information >= 0).all() and (information < 1e-5).all()
        assert (entropy > 1).all()


#: Outputs of every kind: a probability vector, a 1-wide score, a symbolic class axis, an int.
KINDS = f"""{HEADER}
    g (float[B,4] x, float[B,V] w, bool training_mode)
      => (float[B,4] p, float[B,1] score, float[B,V] open, int64[B] best)
      <float r = {{0.5}}, bool training_mode = {{0}}, int64[1] last = {{1}}> {{
        d = org.spatialdrop.SpatialDropout(x, r, training_mode)
        p = Softmax(d)
        score = ReduceSum<keepdims = 1>(d, last)
        open = Softmax(w)
        best = ArgMax<axis = 1, keepdims = 0>(p)
    }}"""


def test_which_outputs_are_probability_vectors():
    source = parse(KINDS)
    model, report = sd.monte_carlo(source, samples=4, classification=True)
    assert report.classification == ("p",)  # declared last dim >= 2, float
    entropies = [o for o in model.graph.output if o.name.endswith("entropy")]
    assert [[d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim]
            for o in entropies] == [["B"], ["B"]]
    # A named output may have a symbolic class axis (the user vouches for it).
    model, report = sd.monte_carlo(source, samples=4, classification=["open", "p"])
    assert report.classification == ("p", "open")
    feeds = {"x": sample_data((3, 4), np.dtype(np.float32)),
             "w": sample_data((3, 6), np.dtype(np.float32))}
    got = dict(zip([o.name for o in model.graph.output],
                   sd.inference_session(model).run(None, feeds), strict=True))
    np.testing.assert_allclose(got["open_entropy"], _entropy(_softmax(feeds["w"])), rtol=1e-5)
    assert (got["open_mutual_information"] < 1e-6).all()  # not random at all
    with pytest.raises(UserError, match="score.*last axis has size 1"):
        sd.monte_carlo(source, samples=4, classification=["score"])
    with pytest.raises(UserError, match="best.*not a float tensor"):
        sd.monte_carlo(source, samples=4, classification=["best"])
    with pytest.raises(UsageError, match="zz.*not an output of the model"):
        sd.monte_carlo(source, samples=4, classification=["zz"])
    with pytest.raises(UsageError, match="collection of output names"):
        sd.monte_carlo(source, samples=4, classification="p")  # one string: ambiguous
    with pytest.raises(UsageError, match="logits needs classification"):
        sd.monte_carlo(source, samples=4, logits=True)
    with pytest.raises(UserError, match="no output is a probability vector"):
        sd.monte_carlo(parse(NO_VECTOR), samples=4, classification=True)


#: Nothing to classify: a 1-wide score and an int.
NO_VECTOR = f"""{HEADER}
    g (float[B,4] x, bool training_mode) => (float[B,1] score, int64[B] best)
      <float r = {{0.5}}, bool training_mode = {{0}}, int64[1] last = {{1}}> {{
        d = org.spatialdrop.SpatialDropout(x, r, training_mode)
        score = ReduceSum<keepdims = 1>(d, last)
        best = ArgMax<axis = 1, keepdims = 0>(d)
    }}"""


def test_statistic_names_never_collide():
    """A value already called p_entropy is renamed; the statistic takes the name."""
    text = PROBABILITIES.replace("int64[B] best)", "int64[B] best, float[B,7] p_entropy)")
    text = text.replace("best = ArgMax", "p_entropy = Relu(p)\n        best = ArgMax")
    model, report = sd.monte_carlo(parse(text), samples=3, classification=["p"])
    names = [o.name for o in model.graph.output]
    assert names[:5] == ["p_mean", "p_std", "p_entropy", "p_expected_entropy",
                         "p_mutual_information"]
    assert names[5:] == ["p_entropy_mean", "p_entropy_std"]
    got = sd.inference_session(model).run(None, FEEDS["probabilities"])
    np.testing.assert_allclose(got[5], got[0], rtol=1e-6)  # Relu of probabilities: the same
    assert got[2].shape == (6,)


def test_cli_classification(tmp_path: Path, capsys: pytest.CaptureFixture):
    src, out = tmp_path / "kinds.onnx", tmp_path / "mc.onnx"
    onnx.save(parse(KINDS), src)
    assert main(["mc", str(src), "-o", str(out), "-n", "4", "--classification", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["classification"] == ["p"] and report["logits"] is False
    assert report["outputs"][0]["mutual_information"] == "p_mutual_information"
    assert "p_mutual_information" in [o.name for o in onnx.load(out).graph.output]
    assert main(["mc", str(src), "-o", str(out), "-n", "4", "--classification-output", "open",
                 "--logits"]) == 0
    summary = capsys.readouterr().err
    assert "open_mutual_information" in summary and "p_entropy" not in summary
    assert main(["mc", str(src), "-o", str(out), "-n", "4", "--classification-output",
                 "score"]) == 3
    assert main(["mc", str(src), "-o", str(out), "-n", "4", "--classification-output",
                 "nope"]) == 2
    assert main(["mc", str(src), "-o", str(out), "-n", "4", "--logits"]) == 2
    single = tmp_path / "single.onnx"
    onnx.save(parse(NO_VECTOR), single)
    assert main(["mc", str(single), "-o", str(out), "-n", "4", "--classification"]) == 3
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 4 and all(line.startswith("spatialdrop-onnx: error:") for line in lines)
    assert "no output is a probability vector" in lines[3]


def test_double_and_half_outputs_compute_in_float():
    """The arithmetic is float whatever the output's type; results take the output's type."""
    for elem, dtype in [(TensorProto.DOUBLE, np.float64), (TensorProto.FLOAT16, np.float16)]:
        name = onnx.helper.tensor_dtype_to_string(elem).split(".")[-1].lower()
        text = PROBABILITIES.replace("float[B,7] p", f"{name}[B,7] p").replace(
            "p = Pad(q, one_more, nothing)", f"pf = Pad(q, one_more, nothing)\n"
            f"        p = Cast<to = {elem}>(pf)").replace("ArgMax<axis = 1, keepdims = 0>(p)",
                                                    "ArgMax<axis = 1, keepdims = 0>(pf)")
        model, _ = sd.monte_carlo(parse(text), samples=N, classification=True,
                                  keep_samples=True)
        got = sd.inference_session(model).run(None, FEEDS["probabilities"])
        entropy, expected, information, samples = got[2], got[3], got[4], got[5]
        assert entropy.dtype == dtype
        want = _expected(samples, logits=False)
        tol = 2e-3 if dtype == np.float16 else 1e-5
        np.testing.assert_allclose(entropy, want[0], rtol=tol, atol=tol)
        np.testing.assert_allclose(expected, want[1], rtol=tol, atol=tol)
        np.testing.assert_allclose(information, want[2], rtol=10 * tol, atol=tol)
