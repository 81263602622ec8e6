from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import requires_shared
from edgebert.data import encode_labels, label_names, read_examples, same_data, sample_examples
from edgebert.errors import DataError


def _write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


@pytest.mark.parametrize(
    ("name", "content", "texts", "labels"),
    [
        ("a.tsv", "sentence\tlabel\nit is fine .\t1\r\nbad\t0\r\n", ["it is fine .", "bad"], ["1", "0"]),
        (
            "b.txt",
            "text;label_name\ni feel; great;joy\nso sad;sadness\n",
            ["i feel; great", "so sad"],
            ["joy", "sadness"],
        ),
        (
            "c.jsonl",
            '{"text": "hi there", "label": "greet"}\n\n{"text": "bye", "label": 2}\n',
            ["hi there", "bye"],
            ["greet", "2"],
        ),
        ("d.csv", 'text,label\n"one, two",pos\nthree,neg\n', ["one, two", "three"], ["pos", "neg"]),
        (
            "e.tsv",
            "a news story\tWorld\nanother one\tSports\n",
            ["a news story", "another one"],
            ["World", "Sports"],
        ),
        ("f.txt", "sentence,label\ngood movie,1\nbad movie,0\n", ["good movie", "bad movie"], ["1", "0"]),
        # no header, the label first: only the first column holds single words
        ("g.csv", '"2","a fine, long review"\n"1","dull"\n', ["a fine, long review", "dull"], ["2", "1"]),
        ("h.tsv", "great\tpositive\nawful\tnegative\n", ["great", "awful"], ["positive", "negative"]),
        ("i.tsv", "good movie\t1\rbad movie\t0\r", ["good movie", "bad movie"], ["1", "0"]),  # CR endings
        ("j.jsonl", '{"text": "a", "label": true}\n{"text": "b", "label": 0.0}\n', ["a", "b"], ["1", "0"]),
    ],
)
def test_formats(tmp_path: Path, name: str, content: str, texts: list[str], labels: list[str]) -> None:
    examples = read_examples(_write(tmp_path, name, content))
    assert examples.texts == texts
    assert examples.labels == labels


def test_pairs_with_bom(tmp_path: Path) -> None:
    content = '\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\tHe said "so".\tHe said so.\n'
    examples = read_examples(_write(tmp_path, "mrpc.tsv", content))
    assert examples.texts == [('He said "so".', "He said so.")]
    assert examples.labels == ["1"]
    assert examples.is_pairs


def test_trec_latin1(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "train.label",
        "DESC:manner How did caf\xe9 culture start ?\nHUM:ind Who won ?\n".encode("latin-1"),
    )
    examples = read_examples(path)
    assert examples.encoding == "cp1252"
    assert examples.texts[0] == "How did caf\xe9 culture start ?"
    assert examples.labels == ["DESC", "HUM"]
    # one line in ten that is not TREC's is an error naming it, not another format
    lines = [f"HUM:ind Who won race {i} ?" for i in range(12)]
    lines[9] = "DESC How do I fix this ?"
    with pytest.raises(DataError, match="line 10 is not 'COARSE:fine question'"):
        read_examples(_write(tmp_path, "bad.label", "\n".join(lines).encode()))


def test_a_sample_is_the_rows_random_sample_draws(tmp_path: Path) -> None:
    import random

    rows = [
        f'"line {i}\nwith a quoted line break",{i % 2}' if i % 7 == 0 else f"line {i},{i % 2}"
        for i in range(300)
    ]
    path = _write(tmp_path, "big.csv", ("text,label\n\n" + "\n".join(rows) + "\n\n").encode())
    everything = read_examples(path, labeled=False)
    for count, seed in ((5, 0), (64, 3), (299, 1)):
        drawn = sample_examples(path, count, seed)
        assert drawn.texts == random.Random(seed).sample(everything.texts, count)
        assert drawn.lines == [everything.lines[everything.texts.index(t)] for t in drawn.texts]
    assert sample_examples(path, 300, 0).texts == everything.texts  # all of them, in order
    assert "line 7\nwith a quoted line break" in everything.texts


def test_pairs_and_single_texts_do_not_mix(tmp_path: Path) -> None:
    rows = [{"text": f"a {i}", "text_pair": f"b {i}", "label": 1} for i in range(3)] + [
        {"text": "ok", "label": 0}
    ]
    path = _write(tmp_path, "mixed.jsonl", "\n".join(json.dumps(r) for r in rows).encode())
    with pytest.raises(
        DataError, match="line 4 holds a single text where the rows before it hold sentence pairs"
    ):
        read_examples(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "empty"),
        ("sentence\tlabel\n", "no rows"),
        ("sentence\tlabel\ngood\t1\nbad\t0\textra\n", "line 3 has 3 columns"),
        ("sentence\tlabel\ngood\t1\nbad\t\n", "line 3 has no label"),
        ("a\tb\tc\n", "no header"),
        ("sentence\tlabel\ngood\t1\n \t0\n", "line 3: the text is empty"),
        ("sentence\tlabel\ngood\t1\nbad\rmovie\t0\n", r"line 3 cannot be read: a carriage return \(\\r\)"),
        (b"\x1f\x8b\x08\x00", "is compressed"),
    ],
)
def test_bad_files_name_the_problem(tmp_path: Path, content: str | bytes, message: str) -> None:
    with pytest.raises(DataError, match=message):
        read_examples(_write(tmp_path, "bad.tsv", content))


def test_text_that_is_not_utf8_is_read_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stray = "sentence\tlabel\ncafé crème brûlée\t1\nnaïve film\t0\n".encode().replace(b"cr", b"cr\xff", 1)
    examples = read_examples(_write(tmp_path, "stray.tsv", stray))
    assert examples.texts == ["café cr\ufffdème brûlée", "naïve film"]  # one stray byte, not mojibake
    assert examples.encoding.startswith("utf-8") and "line 2 has bytes that are not UTF-8" in caplog.text
    windows = read_examples(_write(tmp_path, "w.tsv", "it\u2019s good\t1\n".encode("cp1252")))
    assert windows.texts == ["it\u2019s good"] and "read as Windows-1252" in caplog.text
    utf16 = read_examples(_write(tmp_path, "u.tsv", "sentence\tlabel\ngood\t1\n".encode("utf-16")))
    assert utf16.texts == ["good"] and utf16.encoding == "utf-16"


def test_labels_by_name_or_index(tmp_path: Path) -> None:
    examples = read_examples(_write(tmp_path, "a.tsv", "sentence\tlabel\nx\t1\ny\tnegative\n"))
    assert encode_labels(examples, ("negative", "positive")) == [1, 0]
    bad = read_examples(_write(tmp_path, "b.tsv", "sentence\tlabel\nx\tneutral\n"))
    with pytest.raises(DataError, match="line 2: unknown label 'neutral'"):
        encode_labels(bad, ("negative", "positive"))
    assert label_names(["10", "2", "1"]) == ("1", "2", "10")
    odd = read_examples(_write(tmp_path, "c.tsv", "sentence\tlabel\nx\t\u00b2\n"))  # isdigit, not int
    with pytest.raises(DataError, match="line 2: unknown label"):
        encode_labels(odd, ("negative", "positive"))
    # labels that are integers themselves match by name only: a 0 is not the first of labels 1 and 2
    numbered = read_examples(_write(tmp_path, "d.tsv", "sentence\tlabel\nx\t2\ny\t0\n"))
    with pytest.raises(DataError, match=r"line 3: unknown label '0' \(the model's labels are 1, 2\)$"):
        encode_labels(numbered, ("1", "2"))


def test_plain_text_is_one_text_a_line(tmp_path: Path) -> None:
    # a ';' or a 'WORD:word' in the first line alone makes neither a ';'-separated nor a TREC file
    plain = "a fine film; really\nNOTE:this is text\nthe end\n"
    examples = read_examples(_write(tmp_path, "plain.txt", plain), labeled=False)
    assert examples.texts == ["a fine film; really", "NOTE:this is text", "the end"]
    assert examples.labels is None


@pytest.mark.parametrize(
    ("file", "rows", "pairs"),
    [
        ("sst2/dev.tsv", 872, False),
        ("mrpc/dev.tsv", 408, True),
        ("emotion/validation.txt", 2000, False),
        ("trec/test.label", 500, False),
        ("agnews/train.tsv", 10001, False),
    ],
)
def test_shared_datasets(file: str, rows: int, pairs: bool) -> None:
    examples = read_examples(requires_shared("data", file))
    assert len(examples) == rows
    assert examples.is_pairs == pairs
    assert examples.labels is not None and len(set(examples.labels)) >= 2


def test_label_first_files_and_a_label_column_of_text(tmp_path: Path) -> None:
    rows = "".join(f"{i % 2}\tsentence number {i} about something\n" for i in range(120))
    for labeled in (True, False):  # calibration, which ignores labels, must not read them as its texts
        examples = read_examples(_write(tmp_path, "label_first.tsv", rows), labeled=labeled)
        assert examples.texts[:2] == [
            "sentence number 0 about something",
            "sentence number 1 about something",
        ]
    with pytest.raises(DataError, match="120 distinct labels in 120 rows"):  # a header says otherwise
        read_examples(_write(tmp_path, "swapped.tsv", "sentence\tlabel\n" + rows))
    # a ';' splits text from label only where what follows the last ';' is one word on every line
    semi = read_examples(
        _write(tmp_path, "semi.txt", "first half 0; the ending was weak\nok;1\n"), labeled=False
    )
    assert semi.texts == ["first half 0; the ending was weak", "ok;1"]


def test_lines_are_counted_in_the_file_across_quoted_line_breaks(tmp_path: Path) -> None:
    content = 'text,label\n"one\ntwo\nthree",pos\nfour,neg\n"five\nsix",neg,x\n'
    with pytest.raises(DataError, match="line 6 has 3 columns"):
        read_examples(_write(tmp_path, "a.csv", content))
    examples = read_examples(_write(tmp_path, "b.csv", content.rsplit('"five', 1)[0]))
    assert examples.lines == [2, 5] and examples.texts == ["one\ntwo\nthree", "four"]


def test_one_file_under_two_names_or_copied_is_the_same_data(tmp_path: Path) -> None:
    dev = tmp_path / "dev.tsv"
    dev.write_text("sentence\tlabel\ngood\t1\nbad\t0\n")
    (tmp_path / "copy.tsv").write_bytes(dev.read_bytes())
    (tmp_path / "hard.tsv").hardlink_to(dev)
    (tmp_path / "link.tsv").symlink_to(dev)
    (tmp_path / "other.tsv").write_text("sentence\tlabel\ngood\t1\nbad\t1\n")  # same size, one label
    for name in ("dev.tsv", "copy.tsv", "hard.tsv", "link.tsv"):
        assert same_data(dev, tmp_path / name)
    assert not same_data(dev, tmp_path / "other.tsv")
    assert not same_data(dev, tmp_path / "missing.tsv")
