"""End-to-end on real pretrained BERTs: the embedded default model, and the reference SST-2
classifier in ../shared (skipped where it is absent)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import embeddings, requires_shared
from edgebert.cli import main
from edgebert.runtime import Predictor

pytestmark = pytest.mark.slow
FAST = ["--min-runs", "5", "--min-seconds", "0", "--warmup", "2", "--no-save", "--json"]


def test_default_model_export_int8_and_bench(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    result = CliRunner().invoke(main, ["export", "--quantize", "int8", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.stderr
    manifest = json.loads(result.stdout)
    assert manifest["task"] == "embed" and manifest["source"]["num_hidden_layers"] == 6
    assert manifest["max_length"] == 256  # where sentence-transformers cuts all-MiniLM-L6-v2's texts
    assert manifest["artifacts"]["fp32"]["validation"]["max_abs_diff"] < 1e-4
    assert manifest["artifacts"]["int8"]["validation"]["agreement"] > 0.98
    result = CliRunner().invoke(main, ["bench", str(out), "--batch-size", "1", *FAST])
    assert result.exit_code == 0, result.stderr
    rows = {r["precision"]: r for r in json.loads(result.stdout)["results"]}
    assert rows["int8"]["size_mb"] < 0.35 * rows["fp32"]["size_mb"]
    similar = Predictor(out).predict(
        ["The cat sits on the mat.", "A cat is sitting on a mat.", "Stocks fell sharply."]
    )
    vectors = embeddings(similar)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.3


def test_reference_classifier_keeps_its_accuracy(tmp_path: Path) -> None:
    model = requires_shared("models", "minilm-sst2")
    dev = requires_shared("data", "sst2", "dev.tsv")
    train = requires_shared("data", "sst2", "train.tsv")
    out = tmp_path / "sst2"
    export = [
        "export",
        "-m",
        str(model),
        "--quantize",
        "int8",
        "-o",
        str(out),
        "--calibration-data",
        str(train),
    ]
    result = CliRunner().invoke(main, export)
    assert result.exit_code == 0, result.stderr
    result = CliRunner().invoke(main, ["bench", str(out), "--batch-size", "1", "--data", str(dev), *FAST])
    assert result.exit_code == 0, result.stderr
    rows = {r["precision"]: r for r in json.loads(result.stdout)["results"]}
    assert rows["fp32"]["accuracy"] == pytest.approx(0.8968, abs=0.002)  # as trained (PyTorch fp32)
    assert rows["int8"]["accuracy"] >= rows["fp32"]["accuracy"] - 0.005  # within 0.5 points
    assert rows["int8"]["agreement"] >= 0.98
