"""Pretraining on tiny corpora: masking statistics, NSP balance, loss going down, the checkpoint
loading as BertForPreTraining and fine-tuning with `edgebert train`."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import sentiment_rows
from edgebert.cli import main
from edgebert.samples import SENTENCES
from edgebert.training.pretrain import (
    PretrainConfig,
    build_tokenizer,
    encode_pairs,
    masking,
    read_corpus,
    sentence_pairs,
    split_heldout,
)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    lines = [text for text, _ in sentiment_rows(600, 7)] + list(SENTENCES)
    documents = ["\n".join(lines[i : i + 6]) for i in range(0, len(lines), 6)]
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n\n".join(documents) + "\n")
    return path


def test_masking_is_15_percent_then_80_10_10(corpus: Path) -> None:
    config = PretrainConfig(corpus=str(corpus), vocab_size=500)
    documents = read_corpus(corpus)
    tokenizer = build_tokenizer(config, documents)
    pairs = sentence_pairs(documents, random.Random(0))
    batch = masking(tokenizer, config, seed=3)(encode_pairs(tokenizer, pairs, 64))
    special = set(tokenizer.all_special_ids)
    original = batch["labels"]
    chosen = original != -100
    candidates = sum(
        1 for row in encode_pairs(tokenizer, pairs, 64) for t in row["input_ids"] if t not in special
    )
    assert candidates > 5000
    assert chosen.sum().item() / candidates == pytest.approx(0.15, abs=0.015)
    inputs = batch["input_ids"][chosen]
    masked = (inputs == tokenizer.mask_token_id).float().mean().item()
    unchanged = (inputs == original[chosen]).float().mean().item()
    assert masked == pytest.approx(0.8, abs=0.03)
    assert unchanged == pytest.approx(0.1, abs=0.03)
    assert 1 - masked - unchanged == pytest.approx(0.1, abs=0.03)  # a random token


def test_next_sentence_pairs_are_balanced_and_real(corpus: Path) -> None:
    documents = read_corpus(corpus)
    pairs = sentence_pairs(documents, random.Random(1))
    follows = {(d[i], d[i + 1]) for d in documents for i in range(len(d) - 1)}
    assert sum(label == 0 for _, _, label in pairs) / len(pairs) == pytest.approx(0.5, abs=0.07)
    for a, b, label in pairs:
        assert ((a, b) in follows) == (label == 0)
    assert len(documents) > 50 and all(len(d) <= 6 for d in documents)


def test_held_out_lines_are_never_trained_on() -> None:
    documents = [[f"document {d} line {i} of it" for i in range(1 + d % 6)] for d in range(100)]
    kept, held = split_heldout(documents, 0.05, random.Random(0))
    total = sum(len(d) for d in documents)
    assert len(kept) + len(held) == len(documents)
    assert round(0.05 * total) <= sum(len(d) for d in held) < 0.1 * total
    seen = {line for a, b, _ in sentence_pairs(kept, random.Random(0)) for line in (a, b)}
    assert seen and not seen & {line for d in held for line in d}
    # one document (a file with no blank lines): its last lines are held out
    one = [[f"line {i} of the one document" for i in range(40)]]
    kept, held = split_heldout(one, 0.05, random.Random(0))
    assert kept == [one[0][:38]] and held == [one[0][38:]]


def test_one_line_documents_give_their_halves() -> None:
    documents = [[f"sentence number {i} has a few words"] for i in range(200)] + [["alone"]]
    pairs = sentence_pairs(documents, random.Random(2))
    assert len(pairs) == 200  # a one-word line has no halves
    assert sum(label == 0 for _, _, label in pairs) / len(pairs) == pytest.approx(0.5, abs=0.1)
    lines = {d[0] for d in documents}
    for a, b, label in pairs:
        assert a and b and a not in lines
        assert (f"{a} {b}" in lines) == (label == 0) and (b in lines) == (label == 1)


def test_a_table_given_as_corpus_is_named(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    table = tmp_path / "train.tsv"
    table.write_text("sentence\tlabel\n" + "".join(f"text number {i}\t{i % 2}\n" for i in range(20)))
    assert read_corpus(table) == [["sentence\tlabel", *(f"text number {i}\t{i % 2}" for i in range(20))]]
    assert "looks like a table (its lines hold 1 tab(s) each" in caplog.text
    caplog.clear()
    prose = tmp_path / "prose.txt"
    prose.write_text("a line of text\nanother, with a\ttab in it\nand a third\n")
    assert len(read_corpus(prose)[0]) == 3 and "looks like a table" not in caplog.text


def test_pretrain_learns_saves_and_fine_tunes(
    corpus: Path, tmp_path: Path, sentiment_files: tuple[Path, Path]
) -> None:
    from transformers import BertForPreTraining

    out = tmp_path / "pretrained"
    args = ["pretrain", "--corpus", str(corpus), "--layers", "2", "--hidden", "64", "--heads", "2"]
    args += ["--vocab-size", "500", "--max-steps", "60", "--batch-size", "16", "--max-length", "48"]
    result = CliRunner().invoke(main, [*args, "--out", str(out), "--json"])
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["last_loss"] < summary["first_loss"] - 0.5
    assert 0 <= summary["mlm_accuracy"] <= 1 and 0 <= summary["nsp_accuracy"] <= 1
    model = BertForPreTraining.from_pretrained(out)
    assert model.config.num_hidden_layers == 2 and model.config.hidden_size == 64
    assert (out / "model.safetensors").is_file() and (out / "pretrain_summary.json").is_file()
    train, dev = map(str, sentiment_files)
    tuned = CliRunner().invoke(
        main,
        [
            "train",
            "--data",
            train,
            "--eval",
            dev,
            "-m",
            str(out),
            "-o",
            str(tmp_path / "ft"),
            "--max-steps",
            "3",
            "--json",
        ],
    )
    assert tuned.exit_code == 0, tuned.stderr
    assert json.loads(tuned.stdout)["steps"] == 3


def test_pretrain_refuses_bad_requests(corpus: Path, tmp_path: Path) -> None:
    one_line = tmp_path / "one.txt"
    one_line.write_text("only one line\n")
    result = CliRunner().invoke(main, ["pretrain", "--corpus", str(one_line), "--out", str(tmp_path / "x")])
    assert result.exit_code == 1 and "at least two lines" in result.stderr
    result = CliRunner().invoke(
        main,
        [
            "pretrain",
            "--corpus",
            str(corpus),
            "--hidden",
            "100",
            "--heads",
            "3",
            "--out",
            str(tmp_path / "y"),
        ],
    )
    assert result.exit_code == 1 and "not divisible" in result.stderr
    one_word_lines = tmp_path / "words.txt"
    one_word_lines.write_text("hello\n\nworld\n")  # two documents of one word: no pair to learn from
    result = CliRunner().invoke(
        main, ["pretrain", "--corpus", str(one_word_lines), "-o", str(tmp_path / "z")]
    )
    assert result.exit_code == 1 and "gives too few sentence pairs" in result.stderr
    # an --out that is not a checkpoint is refused before any training, not after it
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("the user's")
    result = CliRunner().invoke(
        main,
        ["pretrain", "--corpus", str(corpus), "-o", str(tmp_path / "mine"), "--force", "--max-steps", "1"],
    )
    assert result.exit_code == 1 and "holds no config.json" in result.stderr
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["keep.txt"]


def test_a_vocab_that_is_not_bert_s_is_refused(tmp_path: Path) -> None:
    from edgebert.errors import DataError

    empty = tmp_path / "vocab.txt"
    empty.write_text("")
    with pytest.raises(DataError, match=r"not a BERT vocab.txt: it lacks \[UNK\]"):
        build_tokenizer(PretrainConfig(corpus="unused", vocab=str(empty)), [])
    (tmp_path / "bundle").mkdir()
    with pytest.raises(DataError, match="a directory without a tokenizer"):
        build_tokenizer(PretrainConfig(corpus="unused", vocab=str(tmp_path / "bundle")), [])
