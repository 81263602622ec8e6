from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from conftest import requires_no_cuda_provider
from edgebert.cli import DEVICES, main
from edgebert.runtime import BACKENDS

FAST = ["--min-runs", "3", "--min-seconds", "0", "--warmup", "1", "--threads", "1", "--no-save"]


def run(*args: str, input: str | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), input=input)
    return result.exit_code, result.stdout, result.stderr


def test_export_info_predict_bench(
    tiny_classifier: Path, tmp_path: Path, sentiment_files: tuple[Path, Path]
) -> None:
    out = tmp_path / "b"
    code, stdout, _ = run(
        "export", "--model", str(tiny_classifier), "--quantize", "int8", "--out", str(out), "--json"
    )
    assert code == 0
    assert set(json.loads(stdout)["artifacts"]) == {"tokenizer", "fp32", "int8", "int8-fused", "int8.data"}
    code, stdout, _ = run("info", str(out))
    assert code == 0 and "model.int8.onnx" in stdout and "max_abs_diff" in stdout
    code, stdout, _ = run("predict", str(out), "a lovely film", "--json")
    assert code == 0 and json.loads(stdout)[0]["label"] in ("negative", "positive")
    code, stdout, _ = run("predict", str(out), input="one line\nanother line\n")
    assert code == 0 and "another line" in stdout
    code, stdout, stderr = run(
        "bench",
        str(out),
        "--batch-size",
        "1",
        "--seq-len",
        "8,16",
        "--data",
        str(sentiment_files[1]),
        "--json",
        *FAST,
    )
    assert code == 0, stderr
    report = json.loads(stdout)
    assert [(r["precision"], r["seq_len"]) for r in report["results"]] == [
        ("fp32", 8),
        ("fp32", 16),
        ("int8", 8),
        ("int8", 16),
    ]
    code, stdout, _ = run("bench", str(out), "--batch-size", "2", "--seq-len", "8", *FAST)
    assert code == 0 and "vs fp32" in stdout and "int8" in stdout


def test_quantize_adds_int8(
    tiny_classifier: Path, tmp_path: Path, sentiment_files: tuple[Path, Path]
) -> None:
    out = tmp_path / "b"
    assert run("export", "-m", str(tiny_classifier), "-o", str(out))[0] == 0
    assert not (out / "model.int8.onnx").exists()
    data = ["--calibration-data", str(sentiment_files[0])]
    distill = ["--calibration", "distill", "--target-agreement", "1"]
    code, stdout, _ = run("quantize", str(out), *data, *distill, "--json")
    assert code == 0
    int8 = json.loads(stdout)["artifacts"]["int8"]
    assert int8["parent"] == "fp32"
    made_by = int8["made_by"]
    assert made_by["sensitivity"]["measured_on"] == f"256 texts of {sentiment_files[0]} (seed 0)"
    target = made_by["agreement_target"]  # layers returned to float one at a time until it is met
    assert target["target"] == 1 and target["met"] == (target["tried"][-1]["figure"] == 1)
    assert all(t["figure"] < 1 for t in target["tried"][:-1])
    assert [t["float"] for t in target["tried"]] == list(range(len(made_by["kept_float"]) + 1))
    # the FFN-output MatMuls are ranked only when the INT8 model as it is falls short of the target
    ranked = set(made_by["sensitivity"]["divergence_if_kept_float"]) - {"none"}
    assert len(ranked) == (0 if target["tried"][0]["figure"] == 1 else 2)  # the tiny model's two layers
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["info", "nowhere"], 1, "no bundle at 'nowhere'"),
        (["export", "--model", "org/some-bert"], 1, "never downloads"),
        (["export", "--quantize", "int4"], 2, "Invalid value for '--quantize'"),
        (["bench", "nowhere", "--batch-size", "one"], 2, "comma-separated"),
        (["bench", "nowhere", "--batch-size", "1,0"], 2, "each value must be at least 1"),
        (["bench", "nowhere", "--real-text", "--seq-len", "16"], 2, "one text per call at its own length"),
        (["bench", "nowhere", "--static-shapes", "2"], 2, "for --device openvino only"),
        (["bench", "nowhere", "--min-seconds", "2", "--max-seconds", "1"], 2, "below --min-seconds 2"),
        (["bench", "nowhere", "--device", "gpu"], 1, "no bundle"),
    ],
)
def test_errors_are_one_line(args: list[str], code: int, message: str) -> None:
    exit_code, stdout, stderr = run(*args)
    assert exit_code == code
    assert message in stderr and "Traceback" not in stderr + stdout


def test_a_checkpoint_is_not_taken_for_a_bundle(tiny_classifier: Path) -> None:
    code, _, stderr = run("calibrate", str(tiny_classifier))
    assert code == 1 and "is a model checkpoint, not a bundle" in stderr
    assert f"edgebert export --model {tiny_classifier} --out BUNDLE" in stderr


def test_calibrate_refuses_dynamic_int8(classify_bundle: Path) -> None:
    code, _, stderr = run("calibrate", str(classify_bundle), "--calibration", "dynamic")
    assert code == 2 and "nothing to calibrate" in stderr


def test_bench_gpu_without_cuda(classify_bundle: Path) -> None:
    requires_no_cuda_provider()
    code, _, stderr = run("bench", str(classify_bundle), "--device", "gpu", *FAST)
    assert code == 1
    assert "no CUDA device visible: install edgebert[gpu] on a machine with an NVIDIA GPU" in stderr


def test_predict_rejects_empty_text(classify_bundle: Path) -> None:
    code, _, stderr = run("predict", str(classify_bundle), "fine", "  ")
    assert code == 1 and "text 1 is empty" in stderr


def test_train_then_export(tiny_classifier: Path, sentiment_files: tuple[Path, Path], tmp_path: Path) -> None:
    train, dev = map(str, sentiment_files)
    model = tmp_path / "model"
    code, stdout, stderr = run(
        "train",
        "--data",
        train,
        "--eval",
        dev,
        "--model",
        str(tiny_classifier),
        "--out",
        str(model),
        "--epochs",
        "3",
        "--batch-size",
        "16",
        "--lr",
        "3e-3",
        "--json",
    )
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["labels"] == ["negative", "positive"] and summary["steps"] == 48
    assert summary["dev_accuracy"] > 0.8  # the words decide the label: learnable in three tiny epochs
    assert (model / "model.safetensors").is_file() and not list(model.glob("*.bin"))
    code, stdout, _ = run(
        "export", "-m", str(model), "-o", str(tmp_path / "b"), "--quantize", "int8", "--json"
    )
    assert code == 0 and json.loads(stdout)["labels"] == ["negative", "positive"]
    copy = tmp_path / "copy-of-train.tsv"  # a copy is the same data
    copy.write_bytes(Path(train).read_bytes())
    assert (
        run("train", "--data", train, "--eval", str(copy), "--out", str(tmp_path / "x"))[2].count("same file")
        == 1
    )


def test_predict_reads_undecodable_stdin(classify_bundle: Path) -> None:
    stdin = b"caf\xe9 latte\n\xff\xfe ok\n"
    result = CliRunner().invoke(main, ["predict", str(classify_bundle), "--json"], input=stdin)
    assert result.exit_code == 0, result.stderr
    # as a data file is: not UTF-8, so Windows-1252, with a warning
    assert [r["text"] for r in json.loads(result.stdout)] == ["café latte", "ÿþ ok"]
    assert "stdin is not UTF-8 (line 1)" in result.stderr
    nothing = CliRunner().invoke(main, ["predict", str(classify_bundle)], input=b"\x01\x02\n")
    assert nothing.exit_code == 1 and "text 0 has no tokens" in nothing.stderr


def test_predict_prints_texts_as_they_are(classify_bundle: Path) -> None:
    texts = "[b]great[/b] movie\r\n[INST] is it good? [/INST]\na good\u2028film\x0cindeed\n\n"
    result = CliRunner().invoke(main, ["predict", str(classify_bundle), "--json"], input=texts.encode())
    assert result.exit_code == 0, result.stderr
    # one answer per line: \r\n ends a line, U+2028 and form feeds do not
    assert [r["text"] for r in json.loads(result.stdout)] == [
        "[b]great[/b] movie",
        "[INST] is it good? [/INST]",
        "a good\u2028film\x0cindeed",
    ]
    table = CliRunner().invoke(main, ["predict", str(classify_bundle), "[b]great[/b]", "[/INST] x"])
    assert table.exit_code == 0, table.stderr
    assert "[b]great[/b]" in table.stdout and "[/INST] x" in table.stdout  # not read as Rich markup
    empty = CliRunner().invoke(main, ["predict", str(classify_bundle), "--json"], input=b"\n")
    assert empty.exit_code == 0 and json.loads(empty.stdout) == [] and "no texts on stdin" in empty.stderr
    # a truncated text is flagged in the JSON and said on stderr, as in the table
    long = CliRunner().invoke(main, ["predict", str(classify_bundle), "--json", "good " * 300])
    assert long.exit_code == 0 and json.loads(long.stdout)[0]["truncated"] is True
    assert "were truncated" in long.stderr


def test_stdin_is_read_as_data_files_are(classify_bundle: Path) -> None:
    import gzip

    def predict(stdin: bytes) -> Any:
        return CliRunner().invoke(main, ["predict", str(classify_bundle), "--json"], input=stdin)

    bom = predict("\ufeffgood movie\nbad movie\n".encode())
    assert [r["text"] for r in json.loads(bom.stdout)] == ["good movie", "bad movie"]
    gap = predict(b"one\n\ntwo\n")  # answers line up with lines: a blank line has no answer
    assert gap.exit_code == 2 and "stdin line 2 is empty" in gap.stderr
    packed = predict(gzip.compress(b"good movie\n"))
    assert packed.exit_code == 1 and "stdin is compressed" in packed.stderr


def test_outputs_that_cannot_be_written_are_refused_before_any_work(
    classify_bundle: Path, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    runner = CliRunner()
    for args in (
        ["export", "-o", str(blocker / "bundle")],
        ["train", "--data", str(blocker), "-o", str(blocker / "model")],
        ["bench", str(classify_bundle), "--report", str(blocker / "report")],
    ):
        result = runner.invoke(main, args)
        assert result.exit_code == 2 and "is a file: no directory can be made inside it" in result.stderr
    # a report inside the bundle would make it fail to load: only its reports/ folder may hold one
    for args in (
        ["bench", str(classify_bundle), "--report", str(classify_bundle / "mine")],
        ["export", "-o", str(classify_bundle / "nested")],
        ["train", "--data", str(blocker), "--eval", str(blocker), "-o", str(classify_bundle / "model")],
        ["bench", str(classify_bundle), "--report", str(classify_bundle)],  # the bundle itself
        ["bench", str(classify_bundle), "--report", f"{classify_bundle}/reports/.."],
    ):
        inside = runner.invoke(main, args)
        assert inside.exit_code == 2 and f"is in bundle '{classify_bundle}'" in inside.stderr
    too_long = runner.invoke(main, ["export", "-o", str(tmp_path / ("b" * 256))])
    assert too_long.exit_code == 1 and "longer than a file name may be" in too_long.stderr


def test_a_write_the_system_refuses_is_one_line(classify_bundle: Path, tmp_path: Path) -> None:
    """The file system refusing a write after the work (here: files may hold 2 KB at most, a real
    limit the kernel enforces) ends in one line naming the file, not a traceback."""
    import resource
    import signal
    import subprocess
    import sys

    def small_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an error from write() rather than a signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (2048, resource.RLIM_INFINITY))

    report = tmp_path / "report"
    report.mkdir()
    (report / "report.json").write_text('{"an": "earlier report"}')
    command = [
        sys.executable,
        "-m",
        "edgebert",
        "bench",
        str(classify_bundle),
        *FAST,
        "--report",
        str(report),
    ]
    done = subprocess.run(
        [*command, "--batch-size", "1", "--seq-len", "8"],
        capture_output=True,
        text=True,
        preexec_fn=small_files,
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert f"could not write '{report}" in done.stderr and "File too large" in done.stderr
    assert "p50" in done.stdout  # the results were shown before the report was written
    # the report is written as a set: the earlier one stays whole, and nothing is left beside it
    assert [p.name for p in report.iterdir()] == ["report.json"]
    assert json.loads((report / "report.json").read_text()) == {"an": "earlier report"}


def test_options_a_run_would_not_use_are_refused(
    classify_bundle: Path, sentiment_files: tuple[Path, Path], tmp_path: Path
) -> None:
    runner = CliRunner()
    data = str(sentiment_files[0])
    unquantized = runner.invoke(main, ["export", "-o", str(tmp_path / "b"), "--calibration-data", data])
    assert unquantized.exit_code == 2 and "--calibration-data: INT8 options, for --quantize int8" in (
        unquantized.stderr
    )
    fp16 = runner.invoke(main, ["quantize", str(classify_bundle), "--fp16-weights"])
    assert fp16.exit_code == 2 and "for --target openvino only" in fp16.stderr
    for args, reason in (
        (["--target-agreement", "0.9"], "for --calibration distill only (the other methods keep"),
        (["--target", "openvino", "--target-agreement", "0.9"], "NNCF's OpenVINO model takes none"),
        (["--max-drop", "1"], "the accuracy budget on --eval-data, which is not given"),
        (["--target", "openvino", "--eval-data", str(sentiment_files[1])], "takes no accuracy budget"),
        (["--target", "openvino", "--calibration", "minmax"], "minmax is an ONNX Runtime method"),
    ):
        unused = runner.invoke(main, ["quantize", str(classify_bundle), *args])
        assert unused.exit_code == 2 and reason in unused.stderr
    real = runner.invoke(main, ["bench", str(classify_bundle), "--real-text", "--batch-size", "8"])
    assert real.exit_code == 2 and "--real-text times one text per call" in real.stderr
    tpu = runner.invoke(main, ["bench", str(classify_bundle), "--device", "cpu,tpu"])
    assert tpu.exit_code == 2 and "tpu: choose from cpu, openvino" in " ".join(tpu.stderr.split())
    assert set(DEVICES) == set(BACKENDS)  # the CLI's list, kept without importing the runtime
    both = ["--student", "x", "--student-layers", "1", "-o", str(tmp_path / "s")]
    distill = runner.invoke(main, ["distill", "--teacher", "x", "--data", data, "--eval", data, *both])
    assert distill.exit_code == 2 and "does not go with --student" in distill.stderr
    assert not (tmp_path / "b").exists() and not (tmp_path / "s").exists()


def test_pairs_from_stdin_do_not_shift(classify_bundle: Path) -> None:
    stdin = b"q1 is good\n\nq2 is bad\nx2 is bad\n"
    result = CliRunner().invoke(main, ["predict", str(classify_bundle), "--pair", "--json"], input=stdin)
    assert result.exit_code == 2 and "stdin line 2 is empty" in result.stderr
    paired = CliRunner().invoke(
        main, ["predict", str(classify_bundle), "--pair", "--json"], input=b"q1 good\r\nq2 bad\n"
    )
    assert paired.exit_code == 0 and [r["text"] for r in json.loads(paired.stdout)] == [["q1 good", "q2 bad"]]
    table = CliRunner().invoke(main, ["predict", str(classify_bundle), "--pair", "q1 good", "q2 bad"])
    assert table.exit_code == 0 and "q1 good [SEP] q2 bad" in table.stdout
    # a pair a line, tab between, as in a TSV file: the same answers as two lines a pair
    lines = b"q1 good\tq2 bad\nx1 bad\tx2 good\n"
    tabbed = CliRunner().invoke(main, ["predict", str(classify_bundle), "--pair", "--json"], input=lines)
    two = b"q1 good\nq2 bad\nx1 bad\nx2 good\n"
    stacked = CliRunner().invoke(main, ["predict", str(classify_bundle), "--pair", "--json"], input=two)
    assert tabbed.exit_code == 0 and json.loads(tabbed.stdout) == json.loads(stacked.stdout)
    assert [r["text"] for r in json.loads(tabbed.stdout)] == [["q1 good", "q2 bad"], ["x1 bad", "x2 good"]]
