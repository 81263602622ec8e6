"""Fixtures: a tiny BERT (2 layers, hidden 64) built offline, as a classifier and as an embedder,
its bundles, and small labeled files. Nothing is downloaded."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from edgebert.samples import SENTENCES

INIT_RANGE = 0.02
SHARED = Path(__file__).resolve().parents[1].parent / "shared"
POSITIVE = ["good", "great", "wonderful", "lovely", "superb", "charming", "delightful", "brilliant"]
NEGATIVE = ["bad", "awful", "terrible", "boring", "dreadful", "dull", "horrible", "weak"]
THINGS = ["movie", "film", "story", "plot", "device", "battery", "screen", "service"]


def requires_shared(*parts: str) -> Path:
    """The path under ../shared, or skip the test with the reason."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent (../shared ships with the project's machines, not with a clone)")
    return path


def requires_no_cuda_provider() -> None:
    """Skip a test of what happens without a GPU where onnxruntime-gpu's CUDA provider is installed."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("ONNX Runtime here has a CUDA provider: this test is for machines without one")


def assert_torch_free(statement: str) -> None:
    """Run ``statement`` in a fresh interpreter and fail if torch (or another heavy library) was
    imported by it."""
    import subprocess
    import sys

    code = (
        f"import sys; {statement}; "
        "heavy = [m for m in ('torch', 'transformers', 'optimum', 'onnx', 'nncf') if m in sys.modules]; "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def sentiment_rows(n: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.choice(["positive", "negative"])
        word = rng.choice(POSITIVE if label == "positive" else NEGATIVE)
        rows.append((f"the {rng.choice(THINGS)} was really {word} and {rng.choice(THINGS)} too", label))
    return rows


def embeddings(predictions: list[Any]) -> Any:
    """The embeddings of an embedding model's predictions, one row each."""
    import numpy as np

    assert all(p.embedding is not None for p in predictions)
    return np.stack([p.embedding for p in predictions])


def write_tsv(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("sentence\tlabel\n" + "".join(f"{t}\t{label}\n" for t, label in rows), encoding="utf-8")
    return path


def _tiny_checkpoint(root: Path, *, classify: bool, **overrides: Any) -> Path:
    """A tiny BERT (a classifier or a sentence-transformers embedder); ``overrides`` change its config."""
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig, BertForSequenceClassification, BertModel, BertTokenizerFast

    corpus = list(SENTENCES) + [t for t, _ in sentiment_rows(200, 0)]
    wordpiece = BertWordPieceTokenizer(lowercase=True)
    wordpiece.train_from_iterator(corpus, vocab_size=400, min_frequency=1, show_progress=False)
    from tokenizers.processors import BertProcessing

    # [CLS] text [SEP], as every real BERT tokenizer does (training the vocabulary does not set it)
    wordpiece.post_processor = BertProcessing(
        ("[SEP]", wordpiece.token_to_id("[SEP]")), ("[CLS]", wordpiece.token_to_id("[CLS]"))
    )
    tokenizer = BertTokenizerFast(tokenizer_object=wordpiece._tokenizer, model_max_length=128)
    config = BertConfig(
        vocab_size=wordpiece.get_vocab_size(),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=128,
        initializer_range=INIT_RANGE,
        id2label={0: "negative", 1: "positive"},
        label2id={"negative": 0, "positive": 1},
        **overrides,
    )
    import torch

    torch.manual_seed(0)
    model = BertForSequenceClassification(config) if classify else BertModel(config)
    path = root / ("tiny-classify" if classify else "tiny-embed")
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    if not classify:
        modules = [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
        ]
        (path / "modules.json").write_text(json.dumps(modules))
        (path / "1_Pooling").mkdir()
        (path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    return path


@pytest.fixture(scope="session")
def tiny_classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny_checkpoint(tmp_path_factory.mktemp("models"), classify=True)


@pytest.fixture(scope="session")
def tiny_embedder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny_checkpoint(tmp_path_factory.mktemp("models"), classify=False)


@pytest.fixture(scope="session")
def classify_bundle(tiny_classifier: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgebert.exporter import ExportConfig, export

    out = tmp_path_factory.mktemp("bundles") / "classify"
    export(out, ExportConfig(model=str(tiny_classifier), quantize="int8"))
    return out


@pytest.fixture(scope="session")
def embed_bundle(tiny_embedder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgebert.exporter import ExportConfig, export

    out = tmp_path_factory.mktemp("bundles") / "embed"
    export(out, ExportConfig(model=str(tiny_embedder), quantize="int8", max_length=64))
    return out


@pytest.fixture(scope="session")
def sentiment_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("data")
    return write_tsv(root / "train.tsv", sentiment_rows(256, 1)), write_tsv(
        root / "dev.tsv", sentiment_rows(64, 2)
    )
