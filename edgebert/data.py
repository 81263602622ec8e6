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
import io
import json
import logging
import re
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
    text, encoding = _read(path, "data file")
    lines = split_lines(text)
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    if first is None:
        raise DataError(f"'{path}' is empty: it needs one example a line")
    suffix = path.suffix.lower()
    filled = [line for line in lines if line.strip()]
    if suffix in (".jsonl", ".json"):
        rows = _jsonl(path, lines)
    elif sum(bool(_TREC_LINE.match(line)) and "\t" not in line for line in filled) >= 0.9 * len(filled):
        rows = _trec(path, lines)  # TREC where nine lines in ten are: the tenth is an error naming it
    else:
        rows = _delimited(path, lines, first, "," if suffix == ".csv" else None)
    if not rows:
        raise DataError(f"'{path}' has a header but no rows")
    texts = [row[1] for row in rows]
    labels = [row[2] for row in rows]
    line_numbers = [row[0] for row in rows]
    blank = next((n for n, t in zip(line_numbers, texts, strict=True) if not _has_text(t)), None)
    if blank is not None:
        raise DataError(f"'{path}' line {blank}: the text is empty")
    pairs = isinstance(texts[0], tuple)
    other = next((n for n, t in zip(line_numbers, texts, strict=True) if isinstance(t, tuple) != pairs), None)
    if other is not None:
        found, before = (
            ("a sentence pair", "single texts") if not pairs else ("a single text", "sentence pairs")
        )
        raise DataError(f"'{path}' line {other} holds {found} where the rows before it hold {before}")
    if any(label is None for label in labels):
        if labeled:
            line = line_numbers[labels.index(None)]
            raise DataError(f"'{path}' line {line} has no label: every row needs one here")
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


def _jsonl(path: Path, lines: list[str]) -> list[Row]:
    rows: list[Row] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise DataError(f"'{path}' line {number} is not JSON ({exc.args[0]})") from exc
        if not isinstance(record, dict):
            raise DataError(f"'{path}' line {number} is not a JSON object")
        fields = {k.lower(): v for k, v in record.items()}
        rows.append(_row(path, number, fields))
    return rows


def _trec(path: Path, lines: list[str]) -> list[Row]:
    rows: list[Row] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        match = _TREC_LINE.match(line.strip())
        if match is None:
            raise DataError(f"'{path}' line {number} is not 'COARSE:fine question' like the lines before it")
        rows.append((number, match.group(2), match.group(1)))
    return rows


def _delimited(path: Path, lines: list[str], first: int, delimiter: str | None) -> list[Row]:
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
    if delimiter == ";":
        split, numbers = [line.rsplit(";", 1) for line in lines], list(range(1, len(lines) + 1))
    else:
        # TSV quotes nothing (MRPC's texts hold bare double quotes); CSV uses ordinary quoting
        reader = (
            csv.reader(io.StringIO("\n".join(lines)), delimiter=delimiter, quoting=csv.QUOTE_NONE)
            if delimiter == "\t"
            else csv.reader(io.StringIO("\n".join(lines)), delimiter=delimiter)
        )
        split, numbers = [], []  # each record, and the file line it starts on
        try:
            for fields in reader:  # a quoted CSV field may span lines
                numbers.append(reader.line_num - sum(f.count("\n") for f in fields))
                split.append(fields)
        except csv.Error as exc:  # a carriage return alone inside a line, a NUL byte
            why = "a carriage return (\\r) inside it" if "new-line" in str(exc) else str(exc)
            raise DataError(f"'{path}' line {max(1, reader.line_num)} cannot be read: {why}") from exc
    header = [h.strip().lower() for h in split[first]]
    has_header = any(h in _COLUMNS for h in header)
    if not has_header:
        # No header: one column is text; two are text then label (SST-2 without its header), or
        # label then text where only the first column holds labels (the Yelp reviews CSV)
        header = ["text"] if len(header) == 1 else ["text", "label"] if len(header) == 2 else []
        two = [f for f in split[first:] if len(f) == 2]
        if (
            len(header) == 2
            and all(_label_like(a) for a, _ in two)
            and not all(_label_like(b) for _, b in two)
        ):
            header = ["label", "text"]
        if not header:
            raise DataError(
                f"'{path}' has {len(split[first])} columns and no header: "
                "add a header naming the text and label columns (e.g. 'sentence<TAB>label')"
            )
    rows: list[Row] = []
    for number, fields in list(zip(numbers, split, strict=True))[first + has_header :]:
        if not any(f.strip() for f in fields):
            continue
        if len(fields) != len(header):
            raise DataError(
                f"'{path}' line {number} has {len(fields)} columns where the header has {len(header)}"
            )
        rows.append(_row(path, number, dict(zip(header, fields, strict=True))))
    return rows


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
