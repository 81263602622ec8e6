"""OpenVINO on the tiny BERT: IR conversion, NNCF INT8 and the converted distill INT8 model, the
Predictor backend and bench across targets, with report files. Real OpenVINO compilation and
inference; nothing is mocked."""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_torch_free
from edgebert.benchmarks import BenchConfig, Timing, bench
from edgebert.benchmarks.report import rows, write_report
from edgebert.errors import EdgebertError
from edgebert.quantizer import QuantizeConfig, quantize
from edgebert.runtime import Predictor
from edgebert.runtime.backends import openvino_default_precision, x86_without_vnni
from edgebert.runtime.predictor import DYNAMIC_INT8_ON_OPENVINO, OPENVINO_INT8_WITHOUT_VNNI

pytest.importorskip("openvino")
pytest.importorskip("nncf")

QUICK = Timing(warmup=1, min_runs=3, min_seconds=0.0, max_seconds=5.0)


@pytest.fixture(scope="module")
def ov_bundle(
    classify_bundle: Path, sentiment_files: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    out = tmp_path_factory.mktemp("openvino") / "bundle"
    shutil.copytree(classify_bundle, out)
    config = QuantizeConfig(
        target="openvino", calibration_data=str(sentiment_files[0]), calibration_samples=64
    )
    quantize(out, config)
    return out


def test_ir_and_nncf_int8_are_validated(ov_bundle: Path) -> None:
    manifest = json.loads((ov_bundle / "manifest.json").read_text())
    artifacts = manifest["artifacts"]
    assert {
        "fp32",
        "int8",
        "openvino-fp32",
        "openvino-int8",
        "openvino-fp32.bin",
        "openvino-int8.bin",
    } <= set(artifacts)
    ir = artifacts["openvino-fp32"]
    assert ir["file"] == "model.openvino.xml" and ir["made_by"]["weights"] == "fp32"
    assert ir["validation"]["max_abs_diff"] <= 1e-4 and ir["validation"]["inference_precision"] == "f32"
    int8 = artifacts["openvino-int8"]
    assert int8["made_by"]["model_type"] == "TRANSFORMER" and "64 texts" in int8["made_by"]["calibrated_on"]
    # NNCF's ranges are static: its model runs texts in batches, as any static INT8 model does
    assert int8["made_by"]["method"] == "nncf" and Predictor(ov_bundle, backend="openvino").batch_size == 32
    assert int8["validation"]["agreement"] >= 0.9
    # checked at the precision a Predictor gets by default, and saying which
    assert int8["validation"]["inference_precision"] == openvino_default_precision()
    # the int8 weights are smaller than the fp32 ones
    assert (ov_bundle / "model.openvino-int8.bin").stat().st_size < 0.5 * (
        ov_bundle / "model.openvino.bin"
    ).stat().st_size


def test_predictor_on_openvino(ov_bundle: Path) -> None:
    predictor = Predictor(ov_bundle, backend="openvino")
    assert predictor.precision == "openvino-int8" and predictor.backend == "openvino"
    fp32 = Predictor(ov_bundle, precision="fp32")
    texts = ["the movie was really good and plot too", "the film was really awful and story too"]
    at_f32 = Predictor(ov_bundle, precision="fp32", backend="openvino", inference_precision="f32")
    assert at_f32.precision == "openvino-fp32" and at_f32.session.inference_precision == "f32"
    np.testing.assert_allclose(at_f32.outputs(texts)[0], fp32.outputs(texts)[0], atol=1e-4)
    assert [p.label for p in predictor.predict(texts)] == [p.label for p in fp32.predict(texts)]
    # OpenVINO's inputs are bucketed to multiples of 32 tokens unless asked otherwise; ONNX Runtime's not
    assert predictor.encode(texts)[0]["input_ids"].shape[1] == 32
    exact = Predictor(ov_bundle, backend="openvino", pad_to_multiple_of=1)
    assert exact.encode(texts)[0]["input_ids"].shape == fp32.encode(texts)[0]["input_ids"].shape
    assert fp32.encode(texts)[0]["input_ids"].shape[1] < 16
    # the IR chooses its backend; ONNX Runtime cannot read it
    assert Predictor(ov_bundle, precision="openvino-int8").backend == "openvino"
    with pytest.raises(EdgebertError, match="OpenVINO IR: run it with backend 'openvino'"):
        Predictor(ov_bundle, precision="openvino-int8", backend="cpu")


def test_openvino_int8_by_default_on_a_cpu_without_vnni_says_so(
    ov_bundle: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Where x86 lacks INT8 dot products, OpenVINO's INT8 model is no faster than fp32: the default
    choice of it says so; asking for INT8 by name does not."""
    assert Predictor(ov_bundle, backend="openvino").precision == "openvino-int8"
    assert (OPENVINO_INT8_WITHOUT_VNNI in caplog.text) == bool(x86_without_vnni())  # None: flags unread
    caplog.clear()
    assert Predictor(ov_bundle, backend="openvino", precision="int8").precision == "openvino-int8"
    assert OPENVINO_INT8_WITHOUT_VNNI not in caplog.text


def test_an_inference_precision_the_cpu_lacks_is_refused(ov_bundle: Path) -> None:
    from edgebert.runtime import BackendError

    for wanted in ("f16", "bf16", "f32"):  # OpenVINO would fall back to another without a word
        try:
            predictor = Predictor(ov_bundle, backend="openvino", precision="fp32", inference_precision=wanted)
        except BackendError as exc:
            assert wanted != "f32" and f"no {wanted} path on this CPU" in str(exc)
        else:
            assert predictor.session.inference_precision == wanted


def test_openvino_runtime_never_imports_torch(ov_bundle: Path) -> None:
    assert_torch_free(
        "from edgebert.runtime import Predictor; "
        f"Predictor({str(ov_bundle)!r}, backend='openvino').predict(['hello'])"
    )


def test_onnx_runtime_methods_are_refused_for_openvino(ov_bundle: Path) -> None:
    with pytest.raises(EdgebertError, match="NNCF measures its own ranges"):
        quantize(ov_bundle, QuantizeConfig(target="openvino", method="minmax"))


def test_distill_converts_the_distill_int8_model(
    classify_bundle: Path,
    sentiment_files: tuple[Path, Path],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    import openvino as ov

    out = tmp_path / "bundle"
    shutil.copytree(classify_bundle, out)
    config = QuantizeConfig(
        target="openvino", method="distill", calibration_data=str(sentiment_files[0]), calibration_samples=48
    )
    quantize(out, config)
    artifacts = json.loads((out / "manifest.json").read_text())["artifacts"]
    int8, ir = artifacts["int8"], artifacts["openvino-int8"]
    # the bundle's dynamic INT8 model was replaced by the distill one, which OpenVINO runs as it is
    assert int8["made_by"]["method"] == "distill" and "calibration" in artifacts
    assert ir["parent"] == "int8" and ir["made_by"]["tool"].startswith("openvino.convert_model")
    assert ir["validation"]["against"] == "int8" and ir["validation"]["agreement"] >= 0.9
    ops = [op.get_type_name() for op in ov.Core().read_model(str(out / ir["file"])).get_ordered_ops()]
    assert ops.count("FakeQuantize") >= 2 * 6  # the weights of two layers' six MatMuls, at least
    texts = [line.split("\t")[0] for line in sentiment_files[1].read_text().splitlines()[1:]]
    onnx_runtime = Predictor(out, precision="int8").outputs(texts)[0]
    at_f32 = Predictor(out, backend="openvino", inference_precision="f32").outputs(texts)[0]
    assert np.mean(onnx_runtime.argmax(-1) == at_f32.argmax(-1)) >= 0.95
    assert np.abs(onnx_runtime - at_f32).max() < 0.1 * np.abs(onnx_runtime).max()

    # asked again with the same texts, the bundle's distill model is converted, not made again
    quantize(out, config)
    again = json.loads((out / "manifest.json").read_text())["artifacts"]
    assert again["int8"]["sha256"] == int8["sha256"] and again["int8"]["made_by"] == int8["made_by"]
    # the texts decide, not the path they were read from: a copy of the file is the same texts,
    # other lines under that name are not
    copy = tmp_path / "copy.tsv"
    shutil.copy(sentiment_files[0], copy)
    quantize(out, dataclasses.replace(config, calibration_data=str(copy)))
    assert json.loads((out / "manifest.json").read_text())["artifacts"]["int8"]["sha256"] == int8["sha256"]
    copy.write_text(sentiment_files[1].read_text())
    quantize(out, dataclasses.replace(config, calibration_data=str(copy)))
    remade = json.loads((out / "manifest.json").read_text())["artifacts"]["int8"]["made_by"]
    assert remade["calibration_texts_sha256"] != int8["made_by"]["calibration_texts_sha256"]
    # replacing the INT8 model removes what was made from it: its calibration file and its IR, and
    # says so (not the graph and weights file every INT8 model gets anew)
    caplog.clear()
    quantize(out, QuantizeConfig(method="dynamic"))
    assert "made from it: calibration, openvino-int8, openvino-int8.bin" in caplog.text
    left = json.loads((out / "manifest.json").read_text())["artifacts"]
    assert not {"calibration", "openvino-int8", "openvino-int8.bin"} & set(left)
    assert not (out / ir["file"]).exists() and not (out / "calibration.json").exists()


def test_bench_across_targets_with_report(
    ov_bundle: Path, sentiment_files: tuple[Path, Path], tmp_path: Path
) -> None:
    config = BenchConfig(
        devices=("cpu", "openvino"),
        batch_sizes=(1, 2),
        seq_lens=(8, 16),
        data=str(sentiment_files[1]),
        threads=1,
        timing=QUICK,
        save=False,
    )
    report = bench(str(ov_bundle), config)
    labels = list(
        dict.fromkeys(f"{r['target']}:{r['model']}:{r['inference_precision']}" for r in report["results"])
    )
    assert labels[:2] == ["cpu:fp32:fp32", "cpu:int8:int8"]
    assert "openvino:openvino-fp32:f32" in labels and "openvino:openvino-int8:int8 + f32" in labels
    # fp32 and the NNCF model, each at f32 and at OpenVINO's default where that is not f32 (bf16)
    openvino_rows = 4 if openvino_default_precision() != "f32" else 2
    assert len(labels) == 2 + openvino_rows
    assert len(report["results"]) == (2 + openvino_rows) * 4  # every target x model at 2 batches x 2 lengths
    for row in report["results"]:
        assert 0 <= row["accuracy"] <= 1 and row["first_inference_ms"] > 0 and row["size_mb"] > 0
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "latency-accuracy-b32-s384.png").write_bytes(b"an earlier report's plot")
    (tmp_path / "report" / "notes.txt").write_text("the user's")
    written = write_report(report, tmp_path / "report")
    names = sorted(p.name for p in written)
    # the plots are this report's alone; nothing else in the directory is touched
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == sorted([*names, "notes.txt"])
    assert names[:3] == [
        "latency-accuracy-b1-s16.png",
        "latency-accuracy-b1-s8.png",
        "latency-accuracy-b2-s16.png",
    ]
    assert json.loads((tmp_path / "report" / "report.json").read_text())["results"] == json.loads(
        json.dumps(report["results"])
    )
    with open(tmp_path / "report" / "report.csv", newline="") as handle:
        parsed = list(csv.DictReader(handle))
    assert len(parsed) == len(report["results"]) and float(parsed[0]["latency_ms.p50"]) > 0
    assert "| target | model |" in (tmp_path / "report" / "report.md").read_text()
    for png in (p for p in written if p.suffix == ".png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_fp16_weights_are_judged_and_named(classify_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    shutil.copytree(classify_bundle, out)
    quantize(out, QuantizeConfig(target="openvino", fp16_weights=True, calibration_samples=32))
    ir = json.loads((out / "manifest.json").read_text())["artifacts"]["openvino-fp32"]
    assert ir["made_by"]["weights"] == "fp16" and ir["validation"]["inference_precision"] == "f32"
    assert ir["validation"]["agreement"] >= 0.9  # judged as a model of another precision, not to 1e-4
    config = BenchConfig(
        devices=("openvino",), batch_sizes=(1,), seq_lens=(8,), threads=1, timing=QUICK, save=False
    )
    report = bench(str(out), config)
    at_f32 = next(r for r in report["results"] if r["inference_precision"] == "f32")
    # computing in f32 from fp16 weights is no fp32 baseline, and the table says which weights
    assert at_f32["fp16_weights"] and at_f32["p50_vs"] is None
    assert "openvino-fp32 (fp16 weights)" in [cells[1] for cells in rows(report)]


def test_real_text_mode(ov_bundle: Path, sentiment_files: tuple[Path, Path]) -> None:
    config = BenchConfig(
        devices=("openvino",),
        precisions=("int8",),
        data=str(sentiment_files[1]),
        real_text=True,
        static_shapes=4,
        threads=1,
        timing=QUICK,
        save=False,
    )
    report = bench(str(ov_bundle), config)
    *at_f32, dynamic, static = report["results"]
    if openvino_default_precision() != "f32":  # then the model also runs at f32, apart
        (row,) = at_f32
        assert row["inference_precision"] == "int8 + f32" and row["static_shapes"] == 0
    else:
        assert not at_f32
    assert (dynamic["model"], dynamic["batch_size"], dynamic["seq_len"]) == ("openvino-int8", 1, "real")
    assert dynamic["runs"] >= 3 and "tokenization included" in report["timed_on"]
    assert (static["model"], static["static_shapes"], dynamic["static_shapes"]) == ("openvino-int8", 4, 0)
    assert static["agreement"] >= 0.9
    # every model timed on the same texts, as many as the slowest ran, and not called noisy for
    # the spread of their lengths
    assert len({row["runs"] for row in report["results"]}) == 1
    assert not any(row["noisy"] for row in report["results"])


def test_cli_export_to_openvino_predict_and_bench(
    tiny_classifier: Path, sentiment_files: tuple[Path, Path], tmp_path: Path
) -> None:
    from click.testing import CliRunner

    from edgebert.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        result = CliRunner().invoke(main, list(args))
        return result.exit_code, result.stdout, result.stderr

    out = tmp_path / "b"
    calibrate = ["--calibration-data", str(sentiment_files[0]), "--calibration-samples", "32"]
    code, stdout, stderr = run(
        "export", "-m", str(tiny_classifier), "--target", "openvino", "--quantize", "int8", *calibrate,
        "-o", str(out), "--json",
    )  # fmt: skip
    assert code == 0, stderr
    assert set(json.loads(stdout)["artifacts"]) == {
        "tokenizer", "fp32", "openvino-fp32", "openvino-fp32.bin", "openvino-int8", "openvino-int8.bin",
    }  # fmt: skip
    code, stdout, _ = run("predict", str(out), "a lovely film", "--backend", "openvino", "--json")
    assert code == 0 and json.loads(stdout)[0]["label"] in ("negative", "positive")
    fast = ["--min-runs", "2", "--min-seconds", "0", "--warmup", "1", "--threads", "1", "--no-save"]
    code, stdout, stderr = run(
        "bench", str(out), "--device", "cpu,openvino", "--batch-size", "1", "--seq-len", "8",
        "--report", str(tmp_path / "report"), *fast,
    )  # fmt: skip
    assert code == 0, stderr
    assert "computes in" in stdout and "openvino-int8" in stdout
    assert (tmp_path / "report" / "latency-accuracy-b1-s8.png").is_file() and "wrote" in stderr
    code, _, stderr = run("quantize", str(out), "--target", "openvino", "--calibration", "entropy")
    assert code == 2 and "NNCF measures its own ranges" in stderr
    # refused before the export's work, not after it
    code, _, stderr = run(
        "export", "-m", str(tiny_classifier), "--target", "openvino", "--quantize", "int8",
        "--calibration", "minmax", "-o", str(tmp_path / "refused"),
    )  # fmt: skip
    assert code == 2 and "NNCF measures its own ranges" in stderr and "loading" not in stderr
    # an IR's precision, asked for on ONNX Runtime, is pointed to OpenVINO
    code, _, stderr = run("predict", str(out), "a lovely film", "--precision", "int8")
    assert code == 1 and "its openvino-int8 model runs with backend 'openvino'" in stderr
    code, stdout, _ = run(
        "predict", str(out), "a film", "--backend", "openvino", "--inference-precision", "f32"
    )
    assert code == 0 and "openvino-int8 (computes in f32)" in " ".join(stdout.split())  # the title, wrapped


def test_static_shapes_follow_the_dynamic_model(ov_bundle: Path) -> None:
    texts = ["the movie was really good", "the film was really awful and the story was dull too"]
    dynamic = Predictor(ov_bundle, precision="fp32", backend="openvino", inference_precision="f32")
    static = Predictor(
        ov_bundle, precision="fp32", backend="openvino", inference_precision="f32", static_shapes=2
    )
    for batch in ([texts[0]], [texts[1]], texts, [texts[0]]):  # three shapes, one met again
        np.testing.assert_allclose(static.outputs(batch)[0], dynamic.outputs(batch)[0], atol=1e-4)
    assert len(static.session._specialised) == 2  # the least recently used shape was let go


def test_dynamic_int8_on_openvino_is_not_padded(
    classify_bundle: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # no IR in this bundle: by default OpenVINO runs its fp32 model, and says how to get INT8; not
    # by running the ONNX dynamic INT8 model, which OpenVINO computes in float, more slowly
    assert Predictor(classify_bundle, backend="openvino").precision == "fp32"
    assert "no OpenVINO INT8 model" in caplog.text and "precision int8" not in caplog.text
    assert DYNAMIC_INT8_ON_OPENVINO not in caplog.text
    # bench runs that model on OpenVINO too, as the Predictor does, and says what it computes in
    config = BenchConfig(devices=("openvino",), precisions=("int8",), batch_sizes=(1,), seq_lens=(8,))
    report = bench(str(classify_bundle), dataclasses.replace(config, threads=1, timing=QUICK, save=False))
    assert {(r["target"], r["model"]) for r in report["results"]} == {("openvino", "int8")}
    assert all(r["inference_precision"].endswith(" from int8 weights") for r in report["results"])
    named = [w.removesuffix(f": {DYNAMIC_INT8_ON_OPENVINO}") for w in report["warnings"]]
    assert "openvino:int8" in ", ".join(named).split(", ")  # with openvino:int8@f32 where bf16 is the default
    # which runs the ONNX dynamic INT8 model, whose ranges would read padding
    caplog.clear()
    predictor = Predictor(classify_bundle, backend="openvino", precision="int8")
    assert DYNAMIC_INT8_ON_OPENVINO in caplog.text
    texts = ["the movie was really good", "bad"]
    assert predictor.precision == "int8" and predictor.encode(texts)[0]["input_ids"].shape[1] < 16
