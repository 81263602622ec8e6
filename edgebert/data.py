"""Reading labeled text into plain lists: TSV/CSV with a header, ``text;label`` files, JSONL,
sentence pairs (MRPC), TREC's ``COARSE:fine question`` lines, and two-column files without a header.

Tolerant where it is safe, strict where a silent wrong answer is possible:
- a UTF-8 byte-order mark, CRLF and CR line endings and UTF-16 with its byte-order mark are
  accepted; a file that is not valid UTF-8 is read with a warning naming the first bad line: as
  UTF-8 with the stray bytes replaced where most of its other non-ASCII text is UTF-8, else as
  Windows-1252 (TREC ships in latin-1); ``Examples.encoding`` says which;
- a compressed file, a ragged row, a missing label or a file with no rows is an error naming the
  line;
- two columns without a header are text then label, or label then text where only the first
  column holds labels (single words); ``text;label`` lines only where every label is one.
"""

from __future__ import annotations

import contextlib
import csv
import filecmp
import itertools
import json
import logging
import os
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from edgebert.errors import DataError

Text = str | tuple[str, str]

_TEXT_COLUMNS = ("sentence", "text", "sentence1", "#1 string", "question", "premise")
_PAIR_COLUMNS = ("sentence2", "#2 string", "text_pair", "hypothesis")
_LABEL_COLUMNS = ("label", "label_name", "quality", "class", "category")
_COLUMNS = _TEXT_COLUMNS + _PAIR_COLUMNS + _LABEL_COLUMNS  # the names that make a first line a header
_TREC_LINE = re.compile(r"^([A-Z]+):\S+ (.+)$")
log = logging.getLogger("edgebert")


@dataclass(frozen=True)
class Examples:
    """Texts (or sentence pairs), their labels as written in the file (or None), and line numbers."""

    texts: list[Text]
    labels: list[str] | None
    lines: list[int]
    path: Path
    encoding: str = "utf-8"

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def is_pairs(self) -> bool:
        return bool(self.texts) and isinstance(self.texts[0], tuple)


def read_examples(path: str | Path, *, labeled: bool = True) -> Examples:
    """Read ``path``; with ``labeled`` every row must carry a label."""
    path = Path(path)
    lines, encoding = _lines(path)
    return _examples(path, list(_rows(path, lines, labeled)), labeled, encoding)


def sample_examples(path: str | Path, count: int, seed: int) -> Examples:
    """``count`` rows of ``path`` drawn with ``seed`` (the rows ``random.Random(seed).sample`` draws
    from all of them), or all of them, in order, where it has no more; labels not needed. Only the
    drawn rows are kept: the file is parsed twice, once to count its rows, so memory holds its lines
    but not all its rows (a training file may be large)."""
    path = Path(path)
    lines, encoding = _lines(path)
    total = sum(1 for _ in _rows(path, lines, labeled=False))
    chosen = random.Random(seed).sample(range(total), count) if total > count else range(total)
    wanted = set(chosen)
    drawn = {i: row for i, row in enumerate(_rows(path, lines, labeled=False)) if i in wanted}
    return _examples(path, [drawn[i] for i in chosen], False, encoding)


def _lines(path: Path) -> tuple[list[str], str]:
    text, encoding = _read(path, "data file")
    return split_lines(text), encoding


def _rows(path: Path, lines: list[str], labeled: bool) -> Iterator[Row]:
    """``path``'s rows in file order, each checked: a text, of the kind of the first (a sentence pair
    or not), and with ``labeled`` a label."""
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    if first is None:
        raise DataError(f"'{path}' is empty: it needs one example a line")
    filled = sum(1 for line in lines if line.strip())
    trec = sum(1 for line in lines if _TREC_LINE.match(line) and "\t" not in line)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        rows = _jsonl(path, lines)
    elif trec >= 0.9 * filled:  # TREC where nine lines in ten are: the tenth is an error naming it
        rows = _trec(path, lines)
    else:
        rows = _delimited(path, lines, first, "," if suffix == ".csv" else None)
    pairs = None
    for number, text, label in rows:
        if not _has_text(text):
            raise DataError(f"'{path}' line {number}: the text is empty")
        if pairs is None:
            pairs = isinstance(text, tuple)
        elif isinstance(text, tuple) != pairs:
            found, before = (
                ("a single text", "sentence pairs") if pairs else ("a sentence pair", "single texts")
            )
            raise DataError(f"'{path}' line {number} holds {found} where the rows before it hold {before}")
        if labeled and label is None:
            raise DataError(f"'{path}' line {number} has no label: every row needs one here")
        yield number, text, label
    if pairs is None:
        raise DataError(f"'{path}' has a header but no rows")


def _examples(path: Path, rows: list[Row], labeled: bool, encoding: str) -> Examples:
    texts = [row[1] for row in rows]
    labels = [row[2] for row in rows]
    line_numbers = [row[0] for row in rows]
    if any(label is None for label in labels):
        return Examples(texts, None, line_numbers, path, encoding)
    distinct = len(set(labels))
    if labeled and distinct > 50 and distinct > len(labels) / 2:
        raise DataError(
            f"'{path}' has {distinct} distinct labels in {len(labels)} rows: is the label column text? "
            "Put the text first and the label second, or add a header naming them"
        )
    return Examples(texts, [str(label) for label in labels], line_numbers, path, encoding)


def split_lines(text: str) -> list[str]:
    """``text``'s lines, ended by ``\n`` or ``\r\n`` only: str.splitlines() also breaks at \x0b,
    \x1c and U+2028, which may sit inside a text."""
    return [line.removesuffix("\r") for line in text.split("\n")]


def label_names(labels: list[str]) -> tuple[str, ...]:
    """Sorted distinct labels: numerically when all are integers, else alphabetically."""
    distinct = set(labels)
    if all(_integer(label) for label in distinct):
        return tuple(sorted(distinct, key=int))
    return tuple(sorted(distinct))


def _has_text(text: Text) -> bool:
    """Whether ``text`` (both texts of a pair) holds more than whitespace."""
    return all(part.strip() for part in ((text,) if isinstance(text, str) else text))


def _integer(label: str) -> bool:
    """Whether ``label`` is an integer in ASCII digits (str.isdigit also takes "²", which int refuses)."""
    return re.fullmatch(r"-?[0-9]+", label) is not None


def label_index(label: str, names: tuple[str, ...]) -> int | None:
    """``label`` as an index into ``names`` (SST-2's 0/1 for negative/positive), or None if it is not
    one. Names that are integers themselves are only ever matched by name: a 0 among labels 1 and 2
    is an unknown label, not the first of them."""
    if all(_integer(name) for name in names) or not _integer(label):
        return None
    return int(label) if 0 <= int(label) < len(names) else None


def encode_labels(examples: Examples, names: tuple[str, ...]) -> list[int]:
    """Label indices for ``examples``: by name, or by integer index into ``names``."""
    if examples.labels is None:
        raise DataError(f"'{examples.path}' has no labels")
    index = {name: i for i, name in enumerate(names)}
    ids = []
    for label, line in zip(examples.labels, examples.lines, strict=True):
        by_index = label_index(label, names)
        if label in index:
            ids.append(index[label])
        elif by_index is not None:
            ids.append(by_index)
        else:
            raise DataError(
                f"'{examples.path}' line {line}: unknown label '{label}' (the model's labels are "
                f"{', '.join(names)}"
                + ("" if all(_integer(n) for n in names) else f"; integers 0-{len(names) - 1} also work")
                + ")"
            )
    return ids


def same_data(first: str | Path, second: str | Path) -> bool:
    """Whether two data files are one: one path (through links, hard links included) or the same
    bytes (a copy). False where either cannot be read: reading it says why."""
    try:
        if os.path.samefile(first, second):
            return True
        if os.path.getsize(first) != os.path.getsize(second):
            return False
        return filecmp.cmp(first, second, shallow=False)
    except OSError:
        return False


def read_text(path: Path) -> str:
    """A plain-text file's contents, decoded as ``read_examples`` does; CRLF read as LF."""
    return _read(path, "text file")[0].replace("\r\n", "\n")


def _read(path: Path, what: str) -> tuple[str, str]:
    if path.is_dir():
        raise DataError(f"{what} '{path}' is a directory: give a file")
    if not path.is_file():
        raise DataError(f"{what} '{path}' does not exist")
    return decode(path.read_bytes(), f"'{path}'")


def decode(raw: bytes, source: str) -> tuple[str, str]:
    """``raw`` text from ``source`` (for messages), and the encoding it was read in: see the module
    docstring. Line endings of a file that has only CRs become LFs."""
    if raw[:2] == b"\x1f\x8b" or raw[:4] == b"PK\x03\x04":
        raise DataError(f"{source} is compressed (gzip or zip): decompress it first")
    text, encoding = _utf16(raw) or _utf8(raw, source)
    return (text.replace("\r", "\n") if "\n" not in text else text), encoding


def _utf16(raw: bytes) -> tuple[str, str] | None:
    """UTF-16 text, where ``raw`` starts with its byte-order mark and decodes."""
    if raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
        with contextlib.suppress(UnicodeDecodeError):
            return raw.decode("utf-16"), "utf-16"
    return None


def _utf8(raw: bytes, source: str) -> tuple[str, str]:
    try:
        return raw.decode("utf-8-sig"), "utf-8"
    except UnicodeDecodeError as exc:
        return _not_utf8(raw, source, raw.count(b"\n", 0, exc.start) + 1)


def _not_utf8(raw: bytes, source: str, line: int) -> tuple[str, str]:
    replaced = raw.decode("utf-8-sig", errors="replace")
    bad = replaced.count("\ufffd") - raw.count("\ufffd".encode())
    if sum(ord(c) > 127 for c in replaced) - bad > bad:  # mostly UTF-8: a few stray bytes
        log.warning("%s line %d has bytes that are not UTF-8: each replaced by U+FFFD", source, line)
        return replaced, "utf-8 (stray bytes replaced)"
    log.warning("%s is not UTF-8 (line %d): read as Windows-1252", source, line)
    try:
        return raw.decode("cp1252"), "cp1252"
    except UnicodeDecodeError:  # the five bytes Windows-1252 leaves undefined: latin-1 has them all
        return raw.decode("latin-1"), "latin-1"


Row = tuple[int, Text, str | None]


def _jsonl(path: Path, lines: list[str]) -> Iterator[Row]:
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise DataError(f"'{path}' line {number} is not JSON ({exc.args[0]})") from exc
        if not isinstance(record, dict):
            raise DataError(f"'{path}' line {number} is not a JSON object")
        yield _row(path, number, {k.lower(): v for k, v in record.items()})


def _trec(path: Path, lines: list[str]) -> Iterator[Row]:
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        match = _TREC_LINE.match(line.strip())
        if match is None:
            raise DataError(f"'{path}' line {number} is not 'COARSE:fine question' like the lines before it")
        yield number, match.group(2), match.group(1)


def _delimited(path: Path, lines: list[str], first: int, delimiter: str | None) -> Iterator[Row]:
    head = lines[first]
    if delimiter is None:  # a tab in the first line; a CSV header; a ';' ending every line; else one column
        if "\t" in head:
            delimiter = "\t"
        elif head.count(",") and all(h.strip().lower() in _COLUMNS for h in head.split(",")):
            delimiter = ","
        elif all(";" in line and _label_like(line.rsplit(";", 1)[1]) for line in lines if line.strip()):
            delimiter = ";"
        else:
            delimiter = "\t"
    filled = ((n, f) for n, f in _records(path, lines, delimiter) if any(x.strip() for x in f))
    start, fields = next(filled)
    header = [h.strip().lower() for h in fields]
    has_header = any(h in _COLUMNS for h in header)
    if not has_header:
        # No header: one column is text; two are text then label (SST-2 without its header), or
        # label then text where only the first column holds labels (the Yelp reviews CSV)
        header = ["text"] if len(header) == 1 else ["text", "label"] if len(header) == 2 else []
        if len(header) == 2 and _label_first(_records(path, lines, delimiter)):
            header = ["label", "text"]
        if not header:
            raise DataError(
                f"'{path}' has {len(fields)} columns and no header: "
                "add a header naming the text and label columns (e.g. 'sentence<TAB>label')"
            )
    rows = filled if has_header else itertools.chain([(start, fields)], filled)
    for number, fields in rows:
        if len(fields) != len(header):
            raise DataError(
                f"'{path}' line {number} has {len(fields)} columns where the header has {len(header)}"
            )
        yield _row(path, number, dict(zip(header, fields, strict=True)))


def _records(path: Path, lines: list[str], delimiter: str) -> Iterator[tuple[int, list[str]]]:
    """Each record's fields and the file line it starts on."""
    if delimiter == ";":
        yield from ((n, line.rsplit(";", 1)) for n, line in enumerate(lines, 1))
        return
    ended = (line + "\n" for line in lines)  # the reader sees line ends: a quoted CSV field may span lines
    # TSV quotes nothing (MRPC's texts hold bare double quotes); CSV uses ordinary quoting
    if delimiter == "\t":
        reader = csv.reader(ended, delimiter=delimiter, quoting=csv.QUOTE_NONE)
    else:
        reader = csv.reader(ended, delimiter=delimiter)
    try:
        for fields in reader:
            yield reader.line_num - sum(f.count("\n") for f in fields), fields
    except csv.Error as exc:  # a carriage return alone inside a line, a NUL byte
        why = "a carriage return (\\r) inside it" if "new-line" in str(exc) else str(exc)
        raise DataError(f"'{path}' line {max(1, reader.line_num)} cannot be read: {why}") from exc


def _label_first(records: Iterator[tuple[int, list[str]]]) -> bool:
    """Whether two-column records hold their label first: only their first column holds labels."""
    firsts = seconds = True
    for _, fields in records:
        if len(fields) == 2:
            firsts, seconds = firsts and _label_like(fields[0]), seconds and _label_like(fields[1])
    return firsts and not seconds


def _label_like(field: str) -> bool:
    """Whether ``field`` could be a label: one short word (``1``, ``positive``, ``__label__2``)."""
    return 0 < len(field.strip()) <= 32 and not any(c.isspace() for c in field.strip())


def _row(path: Path, number: int, fields: dict[str, object]) -> Row:
    text = next((fields[c] for c in _TEXT_COLUMNS if c in fields), None)
    if not isinstance(text, str):
        raise DataError(f"'{path}' line {number} has no text column (one of: {', '.join(_TEXT_COLUMNS)})")
    pair = next((fields[c] for c in _PAIR_COLUMNS if c in fields), None)
    label = next((fields[c] for c in _LABEL_COLUMNS if c in fields), None)
    if isinstance(label, bool | float) and int(label) == label:  # JSON's true, 1.0: the index 1
        label = int(label)
    label = None if label is None or str(label).strip() == "" else str(label).strip()
    content: Text = (text.strip(), str(pair).strip()) if pair is not None else text.strip()
    return number, content, label
