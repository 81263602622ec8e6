"""Static INT8 on the tiny BERT: every method follows fp32, only MatMuls see INT8, the result is
deterministic, memory does not grow with the number of calibration texts, and bad calibration files
get clear errors."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from conftest import sentiment_rows, write_tsv
from edgebert.bundle import Bundle
from edgebert.calibration import (
    STATIC_METHODS,
    StaticInt8,
    _Histograms,
    _integer_matmuls,
    _quantize_static,
    bounds,
    collect_ranges,
    in_float,
)
from edgebert.calibration.search import SMOOTHING_TOLERANCE, _minmax
from edgebert.calibration.smoothing import (
    Smoothing,
    channel_ranges,
    smooth,
    smoothable,
    smoothed_bounds,
    smoothings,
)
from edgebert.cli import main
from edgebert.errors import EdgebertError
from edgebert.quantizer import QuantizeConfig, _quantize_dynamic, quantize
from edgebert.runtime import Predictor
from edgebert.samples import SENTENCES


@pytest.fixture(scope="module")
def fp32_bundle(classify_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny classifier's bundle without its INT8 model."""
    out = tmp_path_factory.mktemp("calibration") / "fp32"
    shutil.copytree(classify_bundle, out)
    manifest = json.loads((out / "manifest.json").read_text())
    artifacts = manifest["artifacts"]
    for name in [n for n, a in artifacts.items() if n == "int8" or a.get("parent") == "int8"]:
        (out / artifacts.pop(name)["file"]).unlink()
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def _calibrated(fp32_bundle: Path, tmp_path: Path, method: str, data: Path, samples: int = 256) -> Bundle:
    out = tmp_path / method
    shutil.copytree(fp32_bundle, out)
    return quantize(
        out, QuantizeConfig(method=method, calibration_data=str(data), calibration_samples=samples)
    )


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy"])
def test_static_methods_follow_fp32(
    fp32_bundle: Path, sentiment_files: tuple[Path, Path], tmp_path: Path, method: str
) -> None:
    bundle = _calibrated(fp32_bundle, tmp_path, method, sentiment_files[0])
    int8 = bundle.manifest.artifacts["int8"]
    assert int8.made_by["method"] == method and "quantize_static" in int8.made_by["tool"]
    assert int8.validation["agreement"] >= 0.9 and int8.validation["max_prob_diff"] <= 0.25
    texts = [t for t, _ in sentiment_rows(64, 3)]
    fp32 = Predictor(bundle, precision="fp32").outputs(texts)[0]
    ours = Predictor(bundle, precision="int8").outputs(texts)[0]
    assert np.mean(fp32.argmax(-1) == ours.argmax(-1)) >= 0.95
    assert np.abs(fp32 - ours).max() < 0.5  # logits; the tiny model's span about 4
    graph = onnx.load(str(bundle.file("int8"))).graph
    assert any(n.op_type == "QuantizeLinear" for n in graph.node)
    gathered = {n.output[0] for n in graph.node if n.op_type == "Gather"}
    quantized = {  # activations measured by calibration (the embedding tables' Gathers stay int8)
        n.output[0] for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in gathered
    }
    readers = [n for n in graph.node if set(n.input) & quantized]
    assert {n.op_type for n in readers} == {"MatMulIntegerToFloat"}  # residuals and LayerNorms: float
    assert all(len(n.input) == 7 for n in readers)  # each with its bias folded in


def test_fused_attention_runs_small_calls(
    fp32_bundle: Path, sentiment_files: tuple[Path, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from edgebert.runtime.backends import ByTokens

    bundle = _calibrated(fp32_bundle, tmp_path, "minmax", sentiment_files[0], samples=64)
    fused = bundle.manifest.artifacts["int8-fused"]
    assert fused.kind == "graph" and fused.parent == "int8" and fused.validation["max_abs_diff"] < 1e-4
    ops = [n.op_type for n in onnx.load(str(bundle.file("int8-fused"))).graph.node]
    # the first layer's self-attention; the last layer's, whose query is the first token only
    assert ops.count("QAttention") == 1 and ops.count("MultiHeadAttention") == 1 and "Softmax" not in ops
    assert fused.made_by["fused"] == {"QAttention": 1, "MultiHeadAttention": 1}
    assert "int8-fused" not in bundle.models()  # not a model of its own: bench times it within int8
    # the weights both graphs read are on disk once, in one file that each graph points into
    weights = bundle.manifest.artifacts["int8.data"]
    assert weights.kind == "weights" and weights.parent == "int8"
    placed = [
        {
            t.name: list(t.external_data)
            for t in onnx.load(str(bundle.file(g)), load_external_data=False).graph.initializer
            if t.external_data
        }
        for g in ("int8", "int8-fused")
    ]
    shared = placed[0].keys() & placed[1].keys()
    assert shared == placed[1].keys() and shared and all(placed[0][n] == placed[1][n] for n in shared)
    assert all(
        e.value == weights.file for entries in placed[1].values() for e in entries if e.key == "location"
    )
    predictor = Predictor(bundle, precision="int8")
    assert isinstance(predictor.session, ByTokens)
    predictor.predict(list(SENTENCES))
    assert predictor.session._large is None  # small calls only: the unfused graph is not loaded
    unfused = predictor.with_model(bundle.file("int8"))
    texts = list(SENTENCES)
    for start in range(0, len(texts), 4):  # texts of different lengths: the padding is masked
        feeds, _ = predictor.encode(texts[start : start + 4])
        assert feeds["attention_mask"].min() == 0
        assert predictor.session.choose(feeds) is predictor.session.small
        ours, theirs = (p.session.run(None, feeds)[0] for p in (predictor, unfused))
        assert np.abs(ours - theirs).max() < 1e-5
    limit = fused.made_by["up_to_tokens"]
    assert limit == 512 * 384**2 // 64**2  # MiniLM's 512 tokens, at the same work for hidden 64
    assert predictor.session.choose({"input_ids": np.zeros((1, limit + 1))}) is predictor.session.large
    # a dynamic INT8 model replacing it has a fused graph of its own: QAttention reads the scale
    # that DynamicQuantizeLinear computes at run time
    dynamic = quantize(bundle.path, QuantizeConfig(method="dynamic"))
    replaced = dynamic.manifest.artifacts["int8-fused"]
    assert replaced.sha256 != fused.sha256 and replaced.validation["max_abs_diff"] < 1e-4
    nodes = onnx.load(str(dynamic.file("int8-fused")), load_external_data=False).graph.node
    made = {o: n.op_type for n in nodes for o in n.output}
    attention = next(n for n in nodes if n.op_type == "QAttention")
    assert made[attention.input[3]] == "DynamicQuantizeLinear"
    predictor = Predictor(dynamic, precision="int8")
    assert isinstance(predictor.session, ByTokens)
    ours = predictor.outputs(texts)[0]
    theirs = predictor.with_model(dynamic.file("int8")).outputs(texts)[0]
    assert np.abs(ours - theirs).max() < 1e-5
    # the unfused graph, opened at the first large call, must be the model the Predictor loaded:
    # where the bundle changed since, large calls run on the fused graph it did load
    stale = Predictor(dynamic, precision="int8")
    before = stale.outputs(texts, batch_size=32)[0]
    quantize(bundle.path, QuantizeConfig(method="minmax", calibration_data=str(sentiment_files[0])))
    assert stale.session.large is stale.session.small and "changed since it was loaded" in caplog.text
    assert np.array_equal(stale.outputs(texts, batch_size=32)[0], before)


def test_static_calibration_is_deterministic(
    fp32_bundle: Path, sentiment_files: tuple[Path, Path], tmp_path: Path
) -> None:
    first = _calibrated(fp32_bundle, tmp_path / "a", "minmax", sentiment_files[0], samples=64)
    second = _calibrated(fp32_bundle, tmp_path / "b", "minmax", sentiment_files[0], samples=64)
    assert first.manifest.artifacts["int8"].sha256 == second.manifest.artifacts["int8"].sha256


def test_quantizing_from_inside_the_bundle(
    fp32_bundle: Path,
    sentiment_files: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # the current directory holds model.int8.onnx.data: onnx.save_model(location=...) refused that
    out = tmp_path / "bundle"
    shutil.copytree(fp32_bundle, out)
    monkeypatch.chdir(out)
    data = str(sentiment_files[0])
    config = QuantizeConfig(method="distill", calibration_data=data, calibration_samples=32)
    with caplog.at_level(logging.WARNING, logger="edgebert"):
        quantize(".", config)
    # 1% of 32 texts is none: so said, with how many to draw
    assert "on 32 calibration texts, agreement 0.99 lets no text change" in caplog.text
    assert "draw 100 or more" in caplog.text
    assert (out / "model.int8.onnx.data").is_file()
    quantize(".", config)  # again, over the INT8 model it made
    assert Predictor(out, precision="int8").predict(["a good film"])[0].label is not None


PEAK = """
import sys
from edgebert.quantizer import QuantizeConfig, quantize
bundle, data, samples = sys.argv[1:4]
config = QuantizeConfig(
    method="entropy", calibration_data=data, calibration_samples=int(samples), keep_float=0
)
quantize(bundle, config)
print(next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")))
"""


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="peak memory is read from /proc")
def test_memory_does_not_grow_with_calibration_samples(fp32_bundle: Path, tmp_path: Path) -> None:
    data = write_tsv(tmp_path / "many.tsv", sentiment_rows(3000, 7))
    peaks = {}
    for samples in (100, 3000):
        out = tmp_path / str(samples)
        shutil.copytree(fp32_bundle, out)
        run = subprocess.run(
            [sys.executable, "-c", PEAK, str(out), str(data), str(samples)],
            capture_output=True,
            text=True,
            check=True,
        )
        peaks[samples] = int(run.stdout.split()[-1]) / 1024
    # measured: 108 MB at 100 texts and at 3000; ONNX Runtime's calibrator fed all 3000 in one reader
    # holds every intermediate tensor until the end and peaked at 444 MB
    assert peaks[3000] - peaks[100] < 40, peaks


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is empty"),
        (b"sentence\tlabel\nonly one column here\n", "line 2"),
        (b"sentence\tlabel\n\xff\xfe bad bytes\t1\n", None),
    ],
)
def test_bad_calibration_files(
    fp32_bundle: Path, tmp_path: Path, content: bytes, message: str | None
) -> None:
    data = tmp_path / "calibration.tsv"
    data.write_bytes(content)
    out = tmp_path / "b"
    shutil.copytree(fp32_bundle, out)
    result = CliRunner().invoke(
        main, ["quantize", str(out), "--calibration", "minmax", "--calibration-data", str(data)]
    )
    if message is None:  # not UTF-8: read as latin-1, as TREC ships, and calibrated on
        assert result.exit_code == 0, result.stderr
        return
    assert result.exit_code == 1 and message in result.stderr, result.stderr
    assert "int8" not in Bundle.load(out).models()


def test_distill_calibration(fp32_bundle: Path, sentiment_files: tuple[Path, Path], tmp_path: Path) -> None:
    from edgebert.fidelity import divergence

    distilled = _calibrated(fp32_bundle, tmp_path / "d", "distill", sentiment_files[0], samples=128)
    minmax = _calibrated(fp32_bundle, tmp_path / "m", "minmax", sentiment_files[0], samples=128)
    made_by = distilled.manifest.artifacts["int8"].made_by
    assert made_by["method"] == "distill" and made_by["divergence_chosen"] <= made_by["divergence_minmax"]
    assert made_by["candidates_tried"] > 0 and made_by["search_seconds"]["total"] > 0
    assert made_by["divergence_measure"] == "KL of class probabilities"  # a classifier
    first = made_by["agreement_target"]["tried"][0]["figure"]  # with no MatMul in float
    ranked = set(made_by["sensitivity"]["divergence_if_kept_float"]) - {"none"}
    assert len(ranked) == (0 if first >= 0.99 else 2), first  # ranked only when it falls short
    report = json.loads(distilled.file("calibration").read_text())
    assert set(report["chosen"]) == set(report["ranges"]) and report["search_texts"] == 128
    assert distilled.manifest.artifacts["calibration"].kind == "calibration"
    assert list(distilled.models()) == ["fp32", "int8"]  # calibration.json is not a model
    smoothing = report["smoothing"]
    by_alpha = smoothing["divergence_by_alpha"]
    assert set(by_alpha) == {"none", "0.75", "0.85", "0.95"}  # the tiny model has FFN-output MatMuls
    closest = min(by_alpha, key=by_alpha.__getitem__)
    assert smoothing["alpha"] == (None if closest == "none" else float(closest))
    assert made_by["divergence_minmax"] == by_alpha["none"]
    # after the strength, each layer's smoothing was tried without, and dropped where the student
    # stayed as close to the teacher (within SMOOTHING_TOLERANCE of the divergence with them all)
    without = smoothing["divergence_without"]
    assert len(without) == (0 if closest == "none" else 2)  # the tiny model's two layers
    assert smoothing["divergence"] <= by_alpha[closest] * (1 + SMOOTHING_TOLERANCE)
    assert set(smoothing["smoothed"]) <= set(without)
    graph = onnx.load(str(distilled.file("int8"))).graph
    divisors = [n for n in graph.node if n.op_type == "Mul" and n.name.endswith("/smoothed")]
    assert len(divisors) == smoothing["matmuls"] == len(smoothing["smoothed"])
    assert set(report["chosen"].values()) <= {"minmax", "percentile", "entropy"}
    assert all(low <= 0 <= high or low <= high for low, high in report["ranges"].values())
    texts = [t for t, _ in sentiment_rows(128, 13)]  # held out from the calibration texts
    fp32 = Predictor(distilled, precision="fp32").outputs(texts)[0]
    ours = Predictor(distilled, precision="int8").outputs(texts)[0]
    theirs = Predictor(minmax, precision="int8").outputs(texts)[0]
    agreement = {
        name: np.mean(fp32.argmax(-1) == out.argmax(-1)) for name, out in (("d", ours), ("m", theirs))
    }
    assert agreement["d"] >= agreement["m"]
    assert divergence("classify", fp32, ours) <= 1e-3
    again = _calibrated(fp32_bundle, tmp_path / "again", "distill", sentiment_files[0], samples=128)
    assert again.manifest.artifacts["int8"].sha256 == distilled.manifest.artifacts["int8"].sha256
    requantized = quantize(distilled.path, QuantizeConfig(keep_float=0))  # dynamic: the ranges file goes
    assert "calibration" not in requantized.manifest.artifacts
    assert not (requantized.path / "calibration.json").exists()


def test_smoothing_keeps_the_fp32_function(classify_bundle: Path, tmp_path: Path) -> None:
    import onnxruntime as ort

    fp32, _, feeds = _fp32_model(classify_bundle, 5)
    inputs = smoothable(fp32)
    assert len(inputs) == 2 and all("output/dense/MatMul" in name for name in inputs)  # 2 layers
    channels = channel_ranges(fp32, feeds, inputs.values())
    (smoothing,) = smoothings(fp32, channels, [0.95])
    assert all(f.shape == (128,) and (f > 0).all() for f in smoothing.factors.values())  # intermediate width
    assert max(float(f.max() / f.min()) for f in smoothing.factors.values()) > 2  # channels differ
    smoothed = tmp_path / "smoothed.onnx"
    smooth(fp32, smoothed, smoothing)
    sessions = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (fp32, smoothed)]
    for feed in feeds:
        before, after = (s.run(None, feed)[0] for s in sessions)
        np.testing.assert_allclose(after, before, atol=1e-5)
    graph = onnx.load(str(smoothed)).graph
    readers = {n.input[0] for n in graph.node if n.name in inputs}
    assert readers == {smoothing.tensor(name) for name in inputs.values()}
    # the smoothed model's ranges follow from the unsmoothed model's, without a pass over the data
    derived = smoothed_bounds(smoothing, bounds(collect_ranges(fp32, feeds, ["minmax"])["minmax"]), channels)
    measured = bounds(collect_ranges(smoothed, feeds, ["minmax"])["minmax"])
    assert set(derived) == set(measured) and readers <= set(measured)
    for name, value in measured.items():
        np.testing.assert_allclose(derived[name], value, rtol=1e-5, atol=1e-6)


def test_histograms_of_many_texts_at_a_time_are_one_texts_at_a_times() -> None:
    """Texts given to ONNX Runtime's histogram collectors together where they fit the bins make the
    very histograms (and so ranges) that one text at a time makes, as the bins widen and buffers fill."""
    from onnxruntime.quantization.calibrate import HistogramCollector

    def collectors() -> list[Any]:  # as collect_ranges configures them
        return [
            HistogramCollector("percentile", False, 2048, 128, 99.999, "same"),
            HistogramCollector("entropy", False, 128, 128, 99.999, "same"),
        ]

    rng = np.random.default_rng(0)
    alone, together = collectors(), collectors()
    batched = _Histograms(together, limit=20_000)
    widened = 0
    for text in range(300):
        for name, scale in [("ffn", 3.0), ("gelu", 1.0), ("zeros", 0.0)]:
            values = (rng.standard_normal(int(rng.integers(40, 400))) * scale).astype(np.float32)
            if name == "gelu":
                values = np.maximum(values, -0.17)
            if name == "zeros" and text > 100:
                values[0] = 5.0  # a range that starts at 0, then opens
            if rng.random() < 0.03:
                values[0] *= 4  # an outlier: the bins widen
                widened += 1
            for collector in alone:
                collector.collect({name: [values.reshape(1, -1)]})
            batched.add(name, values, max(abs(values.min()), abs(values.max())))
    batched.flush()
    assert widened > 10 and batched.held == 0 and not batched.waiting
    for one, many in zip(alone, together, strict=True):
        assert one.histogram_dict.keys() == many.histogram_dict.keys()
        for name, expected in one.histogram_dict.items():
            for a, b in zip(expected, many.histogram_dict[name], strict=True):
                np.testing.assert_array_equal(a, b)
        assert _bounds_of(one) == _bounds_of(many)


def _bounds_of(collector: Any) -> dict[str, list[Any]]:
    with contextlib.redirect_stdout(io.StringIO()):
        return {
            n: [np.asarray(x).tolist() for x in v] for n, v in collector.compute_collection_result().items()
        }


def test_static_int8_models_are_quantize_statics(classify_bundle: Path, tmp_path: Path) -> None:
    """``StaticInt8`` runs ONNX Runtime's quantizer on the whole model once, then sets the ranges, the
    float MatMuls and the smoothed MatMuls itself: each model it makes gives the outputs of
    ``quantize_static`` run on the whole model with those ranges, exclusions and smoothing, to the
    last bit."""
    fp32, predictor, feeds = _fp32_model(classify_bundle, 6)
    texts = [t for t, _ in sentiment_rows(16, 7)]
    ranges = collect_ranges(fp32, feeds, STATIC_METHODS)
    inputs = smoothable(fp32)  # the FFN-output MatMuls
    ffn_outputs = sorted(inputs)
    assert len(ffn_outputs) == 2
    static = StaticInt8.of(fp32, ranges["minmax"])
    muls = [n.op_type for n in static.model(ranges["minmax"]).graph.node].count("Mul")

    def same(made: onnx.ModelProto, source: Path, *args: Any) -> None:
        reference = tmp_path / "reference.onnx"
        _quantize_static(source, reference, *args)
        model = onnx.load(str(reference))
        _integer_matmuls(model)
        _assert_same_model(predictor, made, model, texts)

    for method, keep_float in [("minmax", []), ("entropy", ffn_outputs[:1]), ("percentile", ffn_outputs)]:
        made = static.model(ranges[method], keep_float)
        assert [n.op_type for n in made.graph.node].count("MatMulIntegerToFloat") == 12 - len(keep_float)
        same(made, fp32, ranges[method], keep_float)
    channels = channel_ranges(fp32, feeds, inputs.values())
    (smoothing,) = smoothings(fp32, channels, [0.85])
    one = {inputs[ffn_outputs[1]]: smoothing.factors[inputs[ffn_outputs[1]]]}
    every = tmp_path / "every.onnx"
    smooth(fp32, every, smoothing)
    every_ranges = _minmax(smoothed_bounds(smoothing, bounds(ranges["minmax"]), channels))
    part = static.smoothed_part(every, every_ranges, ffn_outputs)
    assert {n.op_type for n in part.node} == {"Mul", "QuantizeLinear", "DequantizeLinear", "MatMul"}
    for factors, keep_float in [(smoothing.factors, []), (one, []), (smoothing.factors, ffn_outputs[:1])]:
        some = Smoothing(smoothing.alpha, factors)
        changed = some.matmuls(inputs)
        assert changed == (ffn_outputs if factors is smoothing.factors else ffn_outputs[1:])
        smoothed = tmp_path / f"smoothed{len(changed)}.onnx"
        smooth(fp32, smoothed, some)
        smoothed_ranges = _minmax(smoothed_bounds(some, bounds(ranges["minmax"]), channels))
        made = static.smoothed(smoothed, smoothed_ranges, changed).model(smoothed_ranges, keep_float)
        assert [n.op_type for n in made.graph.node].count("Mul") == muls + len(changed)
        same(made, smoothed, smoothed_ranges, keep_float)
        # the part ONNX Runtime made for every MatMul smoothed serves any of them: the same model
        made = static.smoothed(smoothed, smoothed_ranges, changed, part).model(smoothed_ranges, keep_float)
        same(made, smoothed, smoothed_ranges, keep_float)
    with static.parked(tmp_path):  # the QDQ graph waits in a file meanwhile, and comes back whole
        assert static.qdq is None
    same(static.model(ranges["minmax"]), fp32, ranges["minmax"])
    with pytest.raises(EdgebertError, match="no node named nowhere"):
        static.model(ranges["minmax"], ["nowhere"])


def test_dynamic_int8_with_float_matmuls_is_quantize_dynamics(classify_bundle: Path) -> None:
    """Dynamic INT8's probes copy ONNX Runtime's model of the whole graph and return MatMuls to float
    (``in_float``): the outputs of ``quantize_dynamic`` told to exclude them, to the last bit."""
    fp32, predictor, _ = _fp32_model(classify_bundle, 6)
    texts = [t for t, _ in sentiment_rows(16, 7)]
    ffn_outputs = sorted(smoothable(fp32))
    whole = _quantize_dynamic(fp32, QuantizeConfig())
    integer = [n.op_type for n in whole.graph.node].count("MatMulInteger")
    for keep_float in ([], ffn_outputs[:1], ffn_outputs):
        made = onnx.ModelProto()
        made.CopyFrom(whole)
        in_float(made, fp32, keep_float)
        assert [n.op_type for n in made.graph.node].count("MatMulInteger") == integer - len(keep_float)
        reference = _quantize_dynamic(fp32, QuantizeConfig(), keep_float)
        _assert_same_model(predictor, made, reference, texts)


def _fp32_model(classify_bundle: Path, seed: int) -> tuple[Path, Predictor, list[dict[str, np.ndarray]]]:
    """The tiny classifier's fp32 model, its Predictor and 32 sentences tokenized as feeds."""
    predictor = Predictor(classify_bundle, precision="fp32")
    feeds = [predictor.encode([t])[0] for t, _ in sentiment_rows(32, seed)]
    return predictor.bundle.file("fp32"), predictor, feeds


def _assert_same_model(predictor: Predictor, made: Any, reference: Any, texts: list[str]) -> None:
    """``made`` has ``reference``'s operators and gives its outputs on ``texts``, to the last bit."""
    assert sorted(n.op_type for n in made.graph.node) == sorted(n.op_type for n in reference.graph.node)
    expected, got = (predictor.with_model(m.SerializeToString()).outputs(texts)[0] for m in (reference, made))
    np.testing.assert_array_equal(got, expected)


def test_calibrate_command(fp32_bundle: Path, sentiment_files: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "b"
    shutil.copytree(fp32_bundle, out)
    arguments = [
        "calibrate",
        str(out),
        "--calibration-data",
        str(sentiment_files[0]),
        "--calibration-samples",
        "32",
    ]
    result = CliRunner().invoke(main, [*arguments, "--json"])
    assert result.exit_code == 0, result.stderr
    assert Bundle.load(out).manifest.artifacts["int8"].made_by["method"] == "distill"
    assert "calibrate" in CliRunner().invoke(main, ["--help"]).stdout


def test_accuracy_budget_keeps_the_fewest_layers_in_float(
    fp32_bundle: Path, sentiment_files: tuple[Path, Path], tmp_path: Path
) -> None:
    train_file, dev_file = map(str, sentiment_files)
    for name, max_drop in (("loose", 0.5), ("impossible", -1.0)):
        out = tmp_path / name
        shutil.copytree(fp32_bundle, out)
        config = QuantizeConfig(
            method="minmax", calibration_data=train_file, eval_data=dev_file, max_drop=max_drop
        )
        made_by = quantize(out, config).manifest.artifacts["int8"].made_by
        budget = made_by["accuracy_budget"]
        assert budget["eval_data"] == dev_file and budget["max_drop_points"] == max_drop
        if name == "loose":  # the tiny model loses nothing: no layer needs to stay in float
            assert made_by["kept_float"] == [] and budget["met"] and len(budget["tried"]) == 1
        else:  # every FFN output returned to float, one at a time, and the miss is recorded
            assert len(made_by["kept_float"]) == 2 and not budget["met"]
            assert [t["float"] for t in budget["tried"]] == [0, 1, 2]
    same = ["quantize", str(tmp_path / "loose"), "--calibration", "minmax", "--calibration-data", train_file]
    result = CliRunner().invoke(main, [*same, "--eval-data", train_file])
    assert result.exit_code == 1 and "are the same file" in result.stderr


def test_distill_calibration_of_an_embedding_model(
    embed_bundle: Path, sentiment_files: tuple[Path, Path], tmp_path: Path
) -> None:
    out = tmp_path / "embed"
    shutil.copytree(embed_bundle, out)
    data = str(sentiment_files[0])
    bundle = quantize(out, QuantizeConfig(method="distill", calibration_data=data, calibration_samples=64))
    report = json.loads(bundle.file("calibration").read_text())
    assert set(report["smoothing"]["divergence_by_alpha"]) == {"none", "0.75", "0.85", "0.95"}
    texts = [t for t, _ in sentiment_rows(64, 17)]
    fp32 = Predictor(bundle, precision="fp32").outputs(texts)[0]
    ours = Predictor(bundle, precision="int8").outputs(texts)[0]
    cosine = np.sum(fp32 * ours, -1) / (np.linalg.norm(fp32, axis=-1) * np.linalg.norm(ours, axis=-1))
    assert cosine.mean() >= 0.98 and cosine.min() >= 0.9, (cosine.mean(), cosine.min())


def test_settings_no_run_can_use_are_refused_first(
    fp32_bundle: Path, embed_bundle: Path, sentiment_files: tuple[Path, Path]
) -> None:
    from edgebert.errors import DataError, EdgebertError

    data = str(sentiment_files[0])
    with pytest.raises(EdgebertError, match="--calibration-samples must be 1 or more"):
        quantize(fp32_bundle, QuantizeConfig(calibration_data=data, calibration_samples=0))
    with pytest.raises(EdgebertError, match="--target-agreement"):
        quantize(fp32_bundle, QuantizeConfig(method="distill", calibration_data=data, target_agreement=1.5))
    with pytest.raises(DataError, match="needs a classifier bundle"):
        quantize(embed_bundle, QuantizeConfig(calibration_data=data, eval_data=str(sentiment_files[1])))
