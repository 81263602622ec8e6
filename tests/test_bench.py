from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import requires_no_cuda_provider
from edgebert.benchmarks import CPU_FP16, BenchConfig, Timing, bench
from edgebert.benchmarks.latency import latency_stats, noisy
from edgebert.benchmarks.report import caption, pareto
from edgebert.errors import EdgebertError
from edgebert.runtime import BackendError

QUICK = Timing(warmup=2, min_runs=5, min_seconds=0.0, max_seconds=5.0)
ROW_KEYS = {
    "name",
    "precision",
    "target",
    "model",
    "inference_precision",
    "noisy",
    "batch_size",
    "seq_len",
    "latency_ms",
    "throughput_per_s",
    "accuracy",
    "agreement",
    "size_mb",
    "peak_rss_mb",
    "load_ms",
    "first_inference_ms",
    "runs",
    "timed_seconds",
    "stopped_early",
    "fp16_weights",
    "warmup_runs",
    "p50_vs_fp32",
}


def test_bench_measures_every_precision(classify_bundle: Path, sentiment_files: tuple[Path, Path]) -> None:
    report = bench(
        str(classify_bundle),
        BenchConfig(
            batch_sizes=(1, 4), seq_lens=(16,), data=str(sentiment_files[1]), timing=QUICK, threads=1
        ),
    )
    rows = report["results"]
    assert [(r["precision"], r["batch_size"]) for r in rows] == [
        ("fp32", 1),
        ("fp32", 4),
        ("int8", 1),
        ("int8", 4),
    ]
    for row in rows:
        assert set(row) >= ROW_KEYS
        stats = row["latency_ms"]
        assert 0 < stats["min"] <= stats["p50"] <= stats["p90"] <= stats["p99"] <= stats["max"]
        assert row["runs"] >= 5 and row["warmup_runs"] == 2
        assert 0 <= row["accuracy"] <= 1 and row["peak_rss_mb"] > 10
    assert rows[0]["agreement"] == 1.0  # fp32 against itself
    assert rows[0]["p50_vs_fp32"] == 1.0 and rows[2]["p50_vs"] == rows[0]["name"]
    assert rows[2]["p50_vs_fp32"] == rows[2]["latency_ms"]["p50"] / rows[0]["latency_ms"]["p50"]
    assert rows[2]["size_mb"] < rows[0]["size_mb"]
    saved = json.loads(Path(report["saved_to"]).read_text())
    assert saved["results"] == json.loads(json.dumps(rows))
    Path(report["saved_to"]).unlink()


def test_a_shape_cut_short_by_max_seconds_is_said(classify_bundle: Path) -> None:
    timing = Timing(warmup=1, min_runs=10**9, min_seconds=0.0, max_seconds=0.5)
    report = bench(
        str(classify_bundle), BenchConfig(batch_sizes=(1,), seq_lens=(8,), timing=timing, save=False)
    )
    runs = [r["runs"] for r in report["results"]]
    assert all(0 < n < 10**9 for n in runs)
    assert any("timing stopped at --max-seconds (0.5 s a shape)" in w for w in report["warnings"])
    assert f"over {min(runs):,}" in caption(report) and "10000000" not in caption(report)


def test_real_text_times_every_model_on_the_same_texts(
    classify_bundle: Path, sentiment_files: tuple[Path, Path]
) -> None:
    # the slowest model sets how many texts all time: the faster ones then have fewer timed seconds
    # than --min-seconds, which --max-seconds did not cause
    timing = Timing(warmup=1, min_runs=3, min_seconds=0.6, max_seconds=30.0)
    config = BenchConfig(data=str(sentiment_files[1]), real_text=True, timing=timing, save=False)
    report = bench(str(classify_bundle), config)
    rows = report["results"]
    assert [r["name"] for r in rows] == ["cpu:fp32 real", "cpu:int8 real"]
    assert len({r["runs"] for r in rows}) == 1 and max(r["timed_seconds"] for r in rows) >= 0.6
    assert not any(r["stopped_early"] for r in rows) and not report["warnings"]


def test_a_saved_report_never_replaces_another(classify_bundle: Path) -> None:
    from datetime import datetime, timedelta, timezone

    reports = classify_bundle / "reports"
    reports.mkdir(exist_ok=True)
    now = datetime.now(timezone.utc)
    # reports of the seconds this run may end in: another run's, which it must not replace
    others = [reports / f"bench-cpu-{(now + timedelta(seconds=s)):%Y%m%dT%H%M%SZ}.json" for s in range(30)]
    for other in others:
        other.write_text("another run's report")
    timing = Timing(warmup=1, min_runs=2, min_seconds=0.0, max_seconds=1.0)
    report = bench(str(classify_bundle), BenchConfig(batch_sizes=(1,), seq_lens=(8,), timing=timing))
    saved = Path(report["saved_to"])
    assert saved.name.endswith("-2.json") and json.loads(saved.read_text())["results"]
    assert all(other.read_text() == "another run's report" for other in others)
    for path in [saved, *others]:
        path.unlink()


def test_bench_refuses_bad_requests(classify_bundle: Path) -> None:
    with pytest.raises(EdgebertError, match="batch_sizes must be a tuple of whole numbers"):
        bench(str(classify_bundle), BenchConfig(batch_sizes=8, timing=QUICK, save=False))  # type: ignore[arg-type]
    with pytest.raises(EdgebertError, match="max_length"):
        bench(str(classify_bundle), BenchConfig(seq_lens=(4096,), timing=QUICK, save=False))
    with pytest.raises(EdgebertError, match="no fp16 model"):
        bench(str(classify_bundle), BenchConfig(precisions=("fp16",), timing=QUICK, save=False))
    requires_no_cuda_provider()
    with pytest.raises(BackendError, match="no CUDA device visible"):
        bench(str(classify_bundle), BenchConfig(devices=("gpu",), timing=QUICK, save=False))


def test_default_sequence_length_fits_the_bundle(embed_bundle: Path) -> None:
    from click.testing import CliRunner

    from edgebert.cli import main

    # exported at max_length 64: the default 128 tokens would not fit it
    config = BenchConfig(batch_sizes=(1,), precisions=("fp32",), timing=QUICK, save=False)
    assert {r["seq_len"] for r in bench(str(embed_bundle), config)["results"]} == {64}
    # a batch size given twice is timed once
    args = ["bench", str(embed_bundle), "--batch-size", "1,1", "--seq-len", "8", "--precision", "fp32"]
    quick = ["--min-runs", "1", "--min-seconds", "0", "--warmup", "0", "--no-save", "--json"]
    result = CliRunner().invoke(main, args + quick)
    assert result.exit_code == 0, result.stderr
    assert len(json.loads(result.stdout)["results"]) == 1


def test_latency_stats_are_percentiles() -> None:
    stats = latency_stats([i / 1000 for i in range(1, 101)])
    assert stats["p50"] == pytest.approx(50.5) and stats["p99"] == pytest.approx(99.01)
    assert stats["min"] == pytest.approx(1) and stats["max"] == pytest.approx(100)


def test_noisy_runs_are_flagged_on_synthetic_timings() -> None:
    steady = latency_stats([0.010] * 98 + [0.012, 0.013])
    assert not noisy(steady)
    spiky = latency_stats([0.010] * 97 + [0.030, 0.040, 0.050])
    assert spiky["p99"] > 2 * spiky["p50"] and noisy(spiky)


def test_pareto_front() -> None:
    # (latency, accuracy): the second is slower and less accurate than the first; the last two trade
    points = [(5.0, 0.89), (6.0, 0.88), (9.0, 0.90), (2.0, 0.85), (9.0, 0.89)]
    assert pareto(points) == [3, 0, 2]


def test_fp16_model_is_validated_and_left_to_gpus(tiny_classifier: Path, tmp_path: Path) -> None:
    from edgebert.exporter import ExportConfig, export

    bundle = export(tmp_path / "b", ExportConfig(model=str(tiny_classifier), quantize="fp16"))
    fp16 = bundle.manifest.artifacts["fp16"]
    assert fp16.precision == "fp16" and fp16.parent == "fp32"
    assert fp16.validation["agreement"] >= 0.9 and fp16.validation["max_abs_diff"] < 0.05
    assert bundle.file("fp16").stat().st_size < 0.6 * bundle.file("fp32").stat().st_size
    report = bench(str(bundle.path), BenchConfig(batch_sizes=(1,), seq_lens=(8,), timing=QUICK, save=False))
    assert [r["model"] for r in report["results"]] == ["fp32"]  # ONNX Runtime CPU has no fast fp16
    assert report["skipped"] == [f"cpu:fp16: {CPU_FP16}"]
    # asked for alone, it is refused with that reason, not as if the bundle had no model for the CPU
    with pytest.raises(EdgebertError, match=r"models asked for \(fp16\) runs on cpu; cpu:fp16: an fp16"):
        bench(str(bundle.path), BenchConfig(precisions=("fp16",), timing=QUICK, save=False))


def test_a_gpu_run_times_fp32_and_says_why_not_int8(classify_bundle: Path) -> None:
    from edgebert.benchmarks import GPU_INT8, _subjects
    from edgebert.bundle import Bundle

    subjects, skipped = _subjects(Bundle.load(classify_bundle), BenchConfig(devices=("gpu",)))
    assert [(s.model, s.device) for s in subjects.values()] == [("fp32", "gpu")]
    assert skipped == [f"gpu:int8: {GPU_INT8}"] and "TensorRT does not run" in GPU_INT8


def test_a_report_is_not_saved_into_a_bundle_replaced_while_it_ran(
    classify_bundle: Path, tmp_path: Path
) -> None:
    """The results are of the models measured: a bundle another command replaced meanwhile does not
    get them as its own report."""
    import logging
    import shutil
    import threading

    from edgebert.atomic import staging

    copy = tmp_path / "bundle"
    shutil.copytree(classify_bundle, copy)
    timing_began = threading.Event()

    class Watch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith("timing"):
                timing_began.set()

    watch, logger = Watch(), logging.getLogger("edgebert")
    level = logger.level
    logger.addHandler(watch)
    logger.setLevel(logging.INFO)
    results: list[dict] = []
    timing = Timing(warmup=1, min_runs=5, min_seconds=3.0)
    config = BenchConfig(batch_sizes=(1,), seq_lens=(8,), timing=timing)
    runner = threading.Thread(target=lambda: results.append(bench(str(copy), config)))
    try:
        runner.start()
        assert timing_began.wait(60)
        with staging(copy, start_from=copy):  # a writer replaces the bundle (a copy renamed into place)
            pass
        runner.join(60)
    finally:
        logger.removeHandler(watch)
        logger.setLevel(level)
    (report,) = results
    assert "saved_to" not in report and not list((copy / "reports").glob("bench-*.json"))
    assert report["bundle_replaced"] and any(
        "was replaced or removed while this ran" in w for w in report["warnings"]
    )


def test_timers_started_elsewhere_take_their_turns(classify_bundle: Path) -> None:
    """``measure_models``'s ``others``: a timer it did not start (here the harness's own model process,
    started by the test) is timed in turns with its subjects and closed at the end."""
    import multiprocessing

    from edgebert.benchmarks.latency import Subject, _child, measure_models

    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    other = context.Process(target=_child, args=(theirs, Subject(classify_bundle, "fp32", "cpu"), 1))
    other.start()
    try:
        texts = ("a fine film", "dull and far too long", "good")
        subjects = {"int8": Subject(classify_bundle, "int8", "cpu")}
        results = measure_models(subjects, 1, [("real", texts)], QUICK, others={"fp32 elsewhere": ours})
    finally:
        other.join(timeout=30)
    assert set(results) == {"int8", "fp32 elsewhere"}
    for result in results.values():
        (shape,) = result["shapes"]
        assert shape["seq_len"] == "real" and shape["latency_ms"]["p50"] > 0
    assert ours.closed and other.exitcode == 0
